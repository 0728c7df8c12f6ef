// What the client commands share: the --server/--json/--wait options, error reporting and task follow-up.
import { type Command, InvalidArgumentError, type OutputConfiguration } from 'commander';
import type { Task } from '../../control/features/tasks/service.ts';
import { type ApiClient, ApiError, UnreachableError, createClient } from './client.ts';
import { commandPath, inCliWords } from './fields.ts';
import { withNames } from './names.ts';
import { printJson } from './output.ts';
import { quietly, watchTask } from './progress.ts';

export interface ClientOptions {
  server?: string;
  json?: boolean;
  wait?: boolean;
}

/**
 * --server belongs to the program, not to each subcommand: commander then accepts it anywhere on the line
 * (`awan --server U vm list` and `awan vm list --server U`), and actions read it through optsWithGlobals.
 */
export function addServerOption(program: Command): void {
  program.option('--server <url>', 'Cloud Control URL for the client commands (default: $AWAN_SERVER, else the server of the last awan login, else http://127.0.0.1:8080)');
  // Commands made after this inherit the setting, so their help lists --server too.
  program.configureHelp({ showGlobalOptions: true });
}

export const jsonOption = <C extends Command>(c: C, what = 'print the result as JSON; errors go to stderr as the API\'s error body') => c.option('--json', what);
export const waitOption = <C extends Command>(c: C) => c.option('--wait', 'follow the task until it ends; exit 1 if it fails or is cancelled');

export const client = (o: ClientOptions): ApiClient => createClient(o);

/** The API's error body; what `--json` prints on stderr for every failure, whoever found it. */
export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

/** A failure found by the CLI itself (a bad flag, a failed task) in the API's error shape. */
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function errorBody(err: unknown, cmd?: Command): ErrorBody {
  if (err instanceof ApiError || err instanceof CliError) {
    let message = cmd ? inCliWords(cmd, err.message) : err.message;
    if (cmd && err.code === 'VALIDATION_FAILED') message += ` (see: ${commandPath(cmd)} --help)`;
    return { error: { code: err.code, message, ...(err.details ? { details: err.details } : {}) } };
  }
  if (err instanceof UnreachableError) return { error: { code: 'UNAVAILABLE', message: err.message, details: { server: err.server } } };
  return { error: { code: 'BAD_REQUEST', message: err instanceof Error ? err.message : String(err) } };
}

/**
 * Every failure ends here: exit code 1 and one line on stderr, `error CODE: message` for people (scripts
 * may match it) or the error body as JSON with --json. Stdout keeps only results.
 */
export function reportError(err: unknown, o: { json?: boolean; cmd?: Command } = {}): void {
  process.exitCode = 1;
  const body = errorBody(err, o.cmd);
  const json = o.json ?? process.argv.includes('--json');
  if (json) process.stderr.write(`${JSON.stringify(body)}\n`);
  else if (err instanceof ApiError || err instanceof CliError) process.stderr.write(`error ${body.error.code}: ${body.error.message}\n`);
  else process.stderr.write(`error: ${body.error.message}\n`);
}

/** Commander's own complaints (missing argument, bad value) as an error body, for --json. */
export const jsonErrorOutput: OutputConfiguration = {
  outputError: (text, write) => write(`${JSON.stringify(errorBody(new CliError('BAD_REQUEST', text.trim().replace(/^error: /, ''))))}\n`),
};

/**
 * Wraps an action so every failure ends in one clear line and exit code 1, never a stack trace. The
 * options argument (commander passes it second to last, before the command) is swapped for the merged
 * local and global options, so actions see --server wherever it was written.
 */
export function run<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const cmd = args[args.length - 1] as Command;
    const o = cmd.optsWithGlobals<ClientOptions>();
    args[args.length - 2] = o;
    try {
      await fn(...args);
    } catch (err) {
      reportError(err, { json: o.json, cmd });
    }
  };
}

/**
 * After a 202: print the task id (first two words `task ID`, for scripts) and follow it with --wait. With
 * --json the answer is printed instead, its task the finished one when waited for.
 */
export async function followTask<R extends { task: Task }>(api: ApiClient, accepted: R, what: string, o: ClientOptions): Promise<void> {
  if (o.json) {
    if (!o.wait) return printJson(accepted);
    const task = await watchTask(api, accepted.task.id, quietly);
    printJson({ ...accepted, task });
    if (task.state !== 'succeeded') reportError(await taskError(api, task), { json: true });
    return;
  }
  process.stdout.write(`task ${accepted.task.id} ${accepted.task.state}: ${what}\n`);
  if (!o.wait) return;
  await reportOutcome(api, await watchTask(api, accepted.task.id));
}

/** Prints the outcome of a finished task and sets the exit code: 0 only when it succeeded. */
export async function reportOutcome(api: ApiClient, t: Task): Promise<void> {
  if (t.state === 'succeeded') process.stdout.write(`task ${t.id} succeeded${t.message ? `: ${await withNames(api, t.message)}` : ''}\n`);
  else reportError(await taskError(api, t), { json: false });
}

/** A task that did not succeed as an error: its own error, or CANCELLED with its message; names for ids. */
export async function taskError(api: ApiClient, t: Task): Promise<CliError> {
  if (t.error) return new CliError(t.error.code, await withNames(api, t.error.message), { taskId: t.id });
  const message = `task ${t.id} ${t.state}${t.message ? `: ${await withNames(api, t.message)}` : ''}`;
  return new CliError(t.state === 'cancelled' ? 'CANCELLED' : 'TASK_FAILED', message, { taskId: t.id });
}

/** Repeatable option collector for commander (`--label a=b --label c=d`). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Parses a positive integer flag; commander prints InvalidArgumentError next to the flag's name. */
export function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}
