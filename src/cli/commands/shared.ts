// What the client commands share: the --server/--json/--wait options, error reporting and task follow-up.
import { type Command, InvalidArgumentError } from 'commander';
import type { Task } from '../../control/features/tasks/service.ts';
import { type ApiClient, ApiError, UnreachableError, createClient } from './client.ts';
import { reportOutcome, watchTask } from './progress.ts';

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
  program.option('--server <url>', 'Cloud Control URL for the client commands (default: $AWAN_SERVER or http://127.0.0.1:8080)');
  // Commands made after this inherit the setting, so their help lists --server too.
  program.configureHelp({ showGlobalOptions: true });
}

export const jsonOption = (c: Command) => c.option('--json', 'print the raw JSON answer');
export const waitOption = (c: Command) => c.option('--wait', 'follow the task until it ends; exit 1 if it fails');

export const client = (o: ClientOptions): ApiClient => createClient(o);

/** Prints an error the way scripts can match it (`error CODE: message`) and sets exit code 1. */
export function reportError(err: unknown): void {
  process.exitCode = 1;
  if (err instanceof ApiError) process.stderr.write(`error ${err.code}: ${err.message}\n`);
  else if (err instanceof UnreachableError) process.stderr.write(`error: ${err.message}\n`);
  else process.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
}

/**
 * Wraps an action so every failure ends in one clear line and exit code 1, never a stack trace. The
 * options argument (commander passes it second to last, before the command) is swapped for the merged
 * local and global options, so actions see --server wherever it was written.
 */
export function run<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      const cmd = args[args.length - 1] as Command;
      args[args.length - 2] = cmd.optsWithGlobals();
      await fn(...args);
    } catch (err) {
      reportError(err);
    }
  };
}

/** After a 202: print the task id (first two words `task ID`, for scripts) and follow it with --wait. */
export async function followTask(api: ApiClient, task: Task, what: string, wait: boolean | undefined): Promise<void> {
  process.stdout.write(`task ${task.id} ${task.state}: ${what}\n`);
  if (!wait) return;
  reportOutcome(await watchTask(api, task.id));
}

/** Repeatable option collector for commander (`--label a=b --label c=d`). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Parses a positive integer flag; commander prints InvalidArgumentError next to the flag's name. */
export function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}
