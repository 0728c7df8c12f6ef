// awan vm console NAME: the VM's serial console in this terminal; Ctrl-] leaves it.
import type { Command } from 'commander';
import WebSocket from 'ws';
import { resolveServer, resolveToken } from './config.ts';
import { seg } from './client.ts';
import { type ClientOptions, run } from './shared.ts';

const ESCAPE = '\x1d'; // Ctrl-], as in telnet and virsh

export function registerConsole(vm: Command): void {
  vm.command('console <name>')
    .description('attach to the serial console of a running VM (Ctrl-] to leave)')
    .action(run(async (name: string, o: ClientOptions) => {
      const server = resolveServer(o.server);
      const token = resolveToken(server);
      if (!token) throw new Error(`not logged in to ${server}: run awan login --server ${server}`);
      const ws = new WebSocket(`${server.replace(/^http/, 'ws')}/api/v1/vms/${seg(name)}/console`, { headers: { authorization: `Bearer ${token}` } });
      const stdin = process.stdin;
      await new Promise<void>((resolve, reject) => {
        ws.on('open', () => {
          if (stdin.isTTY) {
            stdin.setRawMode(true);
            process.stderr.write(`connected to ${name}; Ctrl-] leaves\r\n`);
          }
          stdin.on('data', (chunk: Buffer) => {
            const text = chunk.toString('utf8');
            if (text.includes(ESCAPE)) return ws.close(1000);
            ws.send(text);
          });
          stdin.resume();
        });
        ws.on('message', (data) => process.stdout.write(data.toString()));
        ws.on('close', (code, reason) => {
          if (stdin.isTTY) stdin.setRawMode(false);
          stdin.pause();
          // Control closes with 4xxx and a reason when the console cannot be had.
          if (code >= 4000) reject(new Error(reason.toString() || `console closed (${code})`));
          else resolve();
        });
        ws.on('error', (err) => reject(new Error(`cannot open the console at ${server}: ${err.message}`)));
      });
    }));
}
