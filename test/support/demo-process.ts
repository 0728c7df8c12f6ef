// Runs awan as a user would, in child processes: the CLI per command, the demo as a long-running process,
// with the CLI's config in a temporary directory so no test touches the real user's files.
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { until } from '../until.ts';
import { cliMain as main, repo as root, type Run } from './cli.ts';

export { main, root, type Run };

/**
 * The environment a child gets: none of the developer's AWAN_* settings (a token or password would leak in),
 * HOME and XDG_CONFIG_HOME in `configDir` (where `awan login` keeps its token), then `extra`.
 */
export function childEnv(configDir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWAN_')));
  return { ...base, HOME: configDir, XDG_CONFIG_HOME: join(configDir, '.config'), ...extra };
}

/** Children still running, so a failing test can end them all by pid in its `after`. */
export const running = new Set<ChildProcess>();

/** Runs a program to its end; `input` is written to its stdin, which is then closed (no terminal). */
export function runProcess(command: string, args: string[], opts: { env: NodeJS.ProcessEnv; input?: string }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: root, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      running.delete(child);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** `awan ARGS` through tsx, without npm in between. */
export const awan = (args: string[], opts: { env: NodeJS.ProcessEnv; input?: string }) =>
  runProcess(process.execPath, ['--import', 'tsx', main, ...args], opts);

export interface Demo {
  child: ChildProcess;
  url: string;
  /** What the banner says after `admin /`: a password, or the note printed instead of one. */
  loginLine: string;
  output(): string;
  stop(): Promise<void>;
}

/** Starts `awan demo ARGS` and waits for its banner. */
export async function startDemo(args: string[], env: NodeJS.ProcessEnv): Promise<Demo> {
  // One node process (tsx as an import, not its CLI, which forks another), so its pid is the demo's.
  const child = spawn(process.execPath, ['--import', 'tsx', main, 'demo', ...args], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let out = '';
  let exited: number | null | undefined;
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.on('exit', (code) => {
    exited = code;
    running.delete(child);
  });
  const stop = async () => {
    if (exited !== undefined) return;
    child.kill('SIGTERM');
    await until(() => exited !== undefined, { timeoutMs: 20_000, what: 'the demo to stop' }).catch(() => {
      child.kill('SIGKILL');
    });
  };
  try {
    const banner = await new Promise<{ url: string; login: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no demo banner within 120 s')), 120_000);
      const look = () => {
        const url = /API and docs\s+(http:\/\/\S+)\/docs/.exec(out)?.[1];
        const login = /login\s+admin \/ (.+)$/m.exec(out)?.[1];
        if (!url || !login || !/Ctrl-C stops everything/.test(out)) return;
        clearTimeout(timer);
        resolve({ url, login: login.trim() });
      };
      child.stdout!.on('data', look);
      child.stderr!.on('data', look);
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the demo exited with ${code} before its banner`));
      });
    });
    return { child, url: banner.url, loginLine: banner.login, output: () => out, stop };
  } catch (err) {
    await stop();
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n--- demo output ---\n${out}`);
  }
}

/** Ends every child a test left running, by pid. */
export async function stopAll(): Promise<void> {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}
