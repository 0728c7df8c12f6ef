// Runs the awan CLI as a real child process, the way a user or a script does, with an environment and a
// config directory of the test's own.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';

export const repo = join(import.meta.dirname, '..', '..');
export const cliMain = join(repo, 'src', 'cli', 'main.ts');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliRunner {
  /** Runs `awan ARGS`; stdin is /dev/null unless `input` is given, so the CLI never sees a terminal. */
  awan(args: string[], opts?: { env?: Record<string, string>; input?: string }): Promise<Run>;
  /** Starts `awan ARGS` with a pipe on stdin and collects its output as it comes. */
  spawn(args: string[], opts?: { env?: Record<string, string> }): Live;
  /** Runs a command that must succeed and returns its stdout. */
  ok(...args: string[]): Promise<string>;
  /** The parsed stdout of a command run with --json that must succeed. */
  json<T>(...args: string[]): Promise<T>;
  env(extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** Kills what is still running. */
  close(): void;
}

export interface Live {
  child: ChildProcess;
  readonly stdout: string;
  readonly stderr: string;
  exited: Promise<number | null>;
}

/**
 * `base()` gives the variables every run gets (XDG_CONFIG_HOME, AWAN_SERVER); a developer's own AWAN_*
 * variables (AWAN_TOKEN, AWAN_PASSWORD) never leak in.
 */
export function cliRunner(base: () => Record<string, string>): CliRunner {
  const children = new Set<ChildProcess>();
  const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWAN_')));
    return { ...clean, ...base(), ...extra };
  };

  function start(args: string[], extraEnv: Record<string, string> | undefined, stdin: 'ignore' | 'pipe'): Live {
    const child = spawn(process.execPath, ['--import', 'tsx', cliMain, ...args], { cwd: repo, env: env(extraEnv), stdio: [stdin, 'pipe', 'pipe'] });
    children.add(child);
    const live = { child, stdout: '', stderr: '', exited: undefined as unknown as Promise<number | null> };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { live.stdout += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { live.stderr += d; });
    live.exited = new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => {
        children.delete(child);
        resolve(code);
      });
    });
    return live;
  }

  const runner: CliRunner = {
    env,
    async awan(args, opts = {}) {
      const live = start(args, opts.env, opts.input === undefined ? 'ignore' : 'pipe');
      if (opts.input !== undefined) live.child.stdin!.end(opts.input);
      const code = await live.exited;
      return { code, stdout: live.stdout, stderr: live.stderr };
    },
    spawn: (args, opts = {}) => start(args, opts.env, 'pipe'),
    async ok(...args) {
      const r = await runner.awan(args);
      assert.equal(r.code, 0, `awan ${args.join(' ')} failed:\n${r.stderr}${r.stdout}`);
      return r.stdout;
    },
    json: async <T>(...args: string[]) => JSON.parse(await runner.ok(...args, '--json')) as T,
    close() {
      for (const child of children) child.kill('SIGKILL');
    },
  };
  return runner;
}
