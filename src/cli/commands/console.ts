// awan vm console NAME: the VM's serial console in this terminal. It ends on Ctrl-], when standard input
// ends (`echo poweroff | awan vm console web-1`) or when the VM stops, and says which, once.
import type { Command } from 'commander';
import WebSocket from 'ws';
import { resolveServer, resolveToken } from './config.ts';
import { seg } from './client.ts';
import { printJson } from './output.ts';
import { type ClientOptions, CliError, client, jsonOption, run } from './shared.ts';

const ESCAPE = '\x1d'; // Ctrl-], as in telnet and virsh
/** After its input ends, the console stays until the guest has been quiet this long: its answer to the last line shows. */
const DRAIN_QUIET_MS = 300;
const DRAIN_MAX_MS = 3000;

/** How a console session ended: an error when it is a failure (exit 1), else why it closed. */
type End = { error: CliError } | { reason: string };

/** Control's close codes (see the console route) as the error codes of the API. */
const refusals: Record<number, string> = { 4001: 'UNAUTHORIZED', 4004: 'VM_NOT_FOUND', 4009: 'INVALID_STATE' };

/** What the close code and reason mean for the user: 1000 is a normal end (the VM stopped), 4xxx a refusal. */
export function describeClose(name: string, code: number, reason: string, leaving: string | undefined): End {
  if (leaving) return { reason: leaving };
  if (code === 1000) return { reason: reason || 'control closed it' };
  const details = { closeCode: code };
  if (refusals[code]) return { error: new CliError(refusals[code], reason || `refused (${code})`, details) };
  if (code === 4010) return { error: new CliError('VM_FAILED', `console of ${name} closed: ${reason}`, details) };
  return { error: new CliError('UNAVAILABLE', `console of ${name} closed: the connection to control was lost (${code}${reason ? `: ${reason}` : ''})`, details) };
}

function attach(url: string, name: string, json: boolean): Promise<End> {
  const ws = new WebSocket(url);
  const stdin = process.stdin;
  const tty = Boolean(stdin.isTTY);
  let leaving: string | undefined;
  let quiet: NodeJS.Timeout | undefined;
  const leave = (why: string) => {
    leaving ??= why;
    ws.close(1000);
  };
  const show = (text: string) => {
    if (json) process.stdout.write(`${JSON.stringify({ output: text })}\n`);
    else process.stdout.write(text);
  };
  return new Promise<End>((resolve, reject) => {
    ws.on('open', () => {
      if (tty) {
        stdin.setRawMode(true);
        process.stderr.write(`connected to ${name}; Ctrl-] leaves\r\n`);
      }
      stdin.on('data', (chunk: Buffer) => {
        const text = chunk.toString('utf8');
        const esc = text.indexOf(ESCAPE);
        if (esc >= 0) {
          if (esc > 0) ws.send(text.slice(0, esc));
          return leave('you left the console');
        }
        ws.send(text);
      });
      stdin.once('end', () => {
        const deadline = setTimeout(() => leave('its input ended'), DRAIN_MAX_MS);
        const settle = () => {
          clearTimeout(quiet);
          quiet = setTimeout(() => {
            clearTimeout(deadline);
            leave('its input ended');
          }, DRAIN_QUIET_MS);
        };
        ws.on('message', settle);
        settle();
      });
      stdin.resume();
    });
    ws.on('message', (data) => show(data.toString()));
    ws.on('close', (code, reason) => {
      clearTimeout(quiet);
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      resolve(describeClose(name, code, reason.toString(), leaving));
    });
    ws.on('error', (err) => reject(new CliError('UNAVAILABLE', `cannot open the console at ${url.replace(/\/api\/.*/, '')}: ${err.message}`)));
  });
}

export function registerConsole(vm: Command): void {
  jsonOption(
    vm.command('console <name>').description('attach to the serial console of a running VM (Ctrl-] to leave); ends when input ends or the VM stops'),
    'print the console output as JSON lines ({"output"}), then one {"vm","closed"} line',
  ).action(run(async (name: string, o: ClientOptions) => {
    const server = resolveServer(o.server);
    if (!resolveToken(server)) throw new CliError('UNAUTHORIZED', `not logged in to ${server}: run awan login --server ${server}`);
    // The WebSocket URL carries a single-use ticket, never the token itself.
    const { ticket } = await client(o).post<{ ticket: string }>(`/api/v1/vms/${seg(name)}/console/tickets`);
    const end = await attach(`${server.replace(/^http/, 'ws')}/api/v1/vms/${seg(name)}/console?ticket=${encodeURIComponent(ticket)}`, name, Boolean(o.json));
    if ('error' in end) throw end.error;
    if (o.json) printJson({ vm: name, closed: end.reason });
    else process.stderr.write(`console of ${name} closed: ${end.reason}\n`);
  }));
}
