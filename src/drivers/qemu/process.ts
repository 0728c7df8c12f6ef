// Starts QEMU detached from the agent (it must outlive an agent restart), finds it again by pidfile, kills it.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { DriverError } from '../types.ts';
import type { VmPaths } from './paths.ts';
import { QmpClient } from './qmp.ts';

export interface Launched {
  pid: number;
  /** Resolves when the process exits, while this agent is its parent (after a restart it is not). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** True when `pid` is a live (not zombie) QEMU whose command line names this VM's directory. */
export function isQemuAlive(pid: number, vmDir: string): boolean {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.includes(vmDir)) return false; // the pid was reused by someone else
    const statLine = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = statLine.slice(statLine.lastIndexOf(')') + 2, statLine.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export async function readPid(pidfile: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(pidfile, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** When QEMU was started, from the pidfile it writes at startup. */
export async function startedAtMs(pidfile: string): Promise<number | undefined> {
  try {
    return (await stat(pidfile)).mtimeMs;
  } catch {
    return undefined;
  }
}

export async function lastLines(path: string, n = 8): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.trim().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** Removes what a previous QEMU of this VM left behind, so a new one does not trip over it. */
export async function clearRuntimeFiles(paths: VmPaths): Promise<void> {
  await Promise.all([paths.pidfile, paths.qmp, paths.serialSocket].map((p) => rm(p, { force: true })));
}

/**
 * Spawns QEMU in its own session (so signals to the agent's process group do not reach it), with stderr in
 * qemu.log, and waits until QMP answers. Fails with BOOT_FAILED and QEMU's own words when it exits first.
 */
export async function launchQemu(
  binary: string,
  args: string[],
  paths: VmPaths,
  opts: { timeoutMs: number; signal?: AbortSignal },
): Promise<{ launched: Launched; qmp: QmpClient }> {
  await clearRuntimeFiles(paths);
  // Truncated per launch: its last lines explain this QEMU's exit, not an older one's.
  const log = openSync(paths.qemuLog, 'w');
  let child;
  try {
    child = spawn(binary, args, { detached: true, stdio: ['ignore', log, log] });
  } finally {
    closeSync(log);
  }
  child.unref();
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    child.once('error', (err) => {
      exitInfo = { code: null, signal: null };
      resolve(exitInfo);
      void err;
    });
  });
  const failure = async (why: string): Promise<DriverError> => {
    const tail = await lastLines(paths.qemuLog);
    return new DriverError('BOOT_FAILED', `${why}${tail ? `: ${tail}` : ''}`);
  };
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (exitInfo) {
      const how = exitInfo.signal ? `signal ${exitInfo.signal}` : `code ${String(exitInfo.code)}`;
      throw await failure(`QEMU exited with ${how}`);
    }
    if (opts.signal?.aborted) {
      if (child.pid) process.kill(child.pid, 'SIGKILL');
      throw new DriverError('BOOT_FAILED', 'start cancelled');
    }
    try {
      const qmp = await QmpClient.connect(paths.qmp, { timeoutMs: 5000 });
      const pid = child.pid;
      if (pid === undefined) throw await failure('QEMU has no pid');
      return { launched: { pid, exited }, qmp };
    } catch (err) {
      if (Date.now() > deadline) {
        if (child.pid) process.kill(child.pid, 'SIGKILL');
        throw await failure(`QMP did not answer within ${opts.timeoutMs} ms (${String(err)})`);
      }
    }
    // The socket appears once QEMU has parsed its options; poll until then.
    await Promise.race([exited, new Promise((r) => setTimeout(r, 25))]);
  }
}

/** Sends SIGKILL and waits (bounded) for the process to be gone. */
export async function killHard(pid: number, vmDir: string, timeoutMs = 10_000): Promise<void> {
  if (!isQemuAlive(pid, vmDir)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitGone(pid, vmDir, timeoutMs);
}

/** Resolves true once the process is gone, false at the deadline. */
export async function waitGone(pid: number, vmDir: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isQemuAlive(pid, vmDir)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
