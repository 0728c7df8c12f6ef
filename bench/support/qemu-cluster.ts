// A real cluster on loopback for benchmarks: `awan serve` and three `awan agent --driver qemu` child processes,
// each host with its own data dir; a host is killed the way a server dies (its agent's process group, its
// QEMUs and its watchdog, all SIGKILLed) and started again on the same data dir.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, cpSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { freePort, pidsMentioning } from '../../test/support/processes.ts';
import { apiRequest } from '../../test/support/http.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';
import { delay, waitFor } from './wait.ts';

const repo = join(import.meta.dirname, '..', '..');
const PASSWORD = 'bench-admin-password';
const UP_TIMEOUT_MS = 90_000;
const GONE_TIMEOUT_MS = 10_000;

/** What `awan serve` is started with; undefined leaves the product's default. */
export interface ControlTimings {
  hostLeaseMs?: number;
  failoverMarginMs?: number;
  heartbeatMs?: number;
}

export interface HostInfo {
  id: string;
  name: string;
  state: string;
  connected: boolean;
  failedAt: string | null;
  accelerator: string | null;
}

export interface QemuCluster {
  readonly dir: string;
  readonly poolDir: string;
  readonly hostNames: string[];
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** Starts control with these timings, stopping the running one first (same database, same port). */
  startControl(t: ControlTimings): Promise<void>;
  hosts(): Promise<HostInfo[]>;
  allReady(): Promise<boolean>;
  /** SIGKILLs the host's agent (its whole process group) and every process naming its data dir; waits until they are gone. */
  killHost(name: string): Promise<number[]>;
  /** Starts the host's agent again on its data dir (it keeps its credential). */
  startAgent(name: string): void;
  /** The console history the host's agent keeps for a VM ('' when it has none). */
  consoleOf(host: string, vmId: string): string;
  waitTask(id: string, timeoutMs: number): Promise<{ state: string; error?: unknown }>;
  close(): Promise<void>;
}

const alive = (pid: number): boolean => {
  try {
    return !/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Kills a child's whole process group (it was spawned detached, so the group is its own). */
function killGroup(child: ChildProcess | undefined): void {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

const exited = (child: ChildProcess): Promise<void> =>
  child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));

/**
 * Starts control (default timings) and `hosts` QEMU agents joined to it, and waits until all are ready.
 * `imageDirs`: where images may be registered from (the test guest's directory).
 */
export async function startQemuCluster(prefix: string, hostNames: string[], imageDirs: string[]): Promise<QemuCluster> {
  // Short: unix socket paths under it must stay within 108 bytes.
  const dir = makeTempDir(prefix);
  const poolDir = join(dir, 'pool');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const children = new Map<string, ChildProcess>();
  let token = '';
  // On Ctrl-C or a crash: QEMUs, watchdogs and agents run detached from us, nothing else would stop them.
  const killAllSync = (): void => {
    for (const c of children.values()) killGroup(c);
    killPids(pidsMentioning(`${dir}/`));
  };
  process.on('exit', killAllSync);

  const env = (): NodeJS.ProcessEnv => ({ ...process.env, AWAN_ADMIN_PASSWORD: PASSWORD, AWAN_LOG_LEVEL: process.env.AWAN_BENCH_LOG ?? 'info', AWAN_LOG_FORMAT: 'json' });

  /** `awan <args>` as its own process group, its output appended to <dir>/<name>.log. */
  function awan(name: string, args: string[]): ChildProcess {
    const log = openSync(join(dir, `${name}.log`), 'a');
    try {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: repo, env: env(), stdio: ['ignore', log, log], detached: true });
      children.set(name, child);
      return child;
    } finally {
      closeSync(log);
    }
  }

  const api = <T>(method: string, path: string, body?: unknown) => apiRequest<T>(url, token, method, path, body, 15_000);

  const hostDir = (name: string) => join(dir, name);
  const hosts = async () => (await api<{ items: HostInfo[] }>('GET', '/api/v1/hosts')).body.items;
  const allReady = async () => {
    const items = await hosts().catch(() => []);
    return items.length === hostNames.length && items.every((h) => h.state === 'ready' && h.connected);
  };

  async function startControl(t: ControlTimings): Promise<void> {
    const running = children.get('control');
    if (running) {
      running.kill('SIGTERM');
      const timer = setTimeout(() => killGroup(running), 10_000);
      await exited(running);
      clearTimeout(timer);
    }
    const opt = (flag: string, v: number | undefined) => (v === undefined ? [] : [flag, String(v)]);
    const child = awan('control', [
      'serve', '--host', '127.0.0.1', '--port', String(port), '--db', `sqlite:${join(dir, 'awan.db')}`, '--pool-dir', poolDir,
      ...imageDirs.flatMap((d) => ['--image-dir', d]),
      ...opt('--host-lease-ms', t.hostLeaseMs), ...opt('--failover-margin-ms', t.failoverMarginMs), ...opt('--heartbeat-ms', t.heartbeatMs),
      // The bench kills the same hosts again and again on purpose: no quarantine for flapping.
      '--host-flap-failures', '0',
    ]);
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`control exited (${child.exitCode}); see ${join(dir, 'control.log')}`);
      return (await fetch(`${url}/healthz`).catch(() => undefined))?.ok === true;
    }, 'control up', UP_TIMEOUT_MS, 100);
    const res = await fetch(`${url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
    if (!res.ok) throw new Error(`login failed: ${res.status} ${await res.text()}`);
    token = ((await res.json()) as { token: string }).token;
  }

  function startAgent(name: string, joinToken?: string): void {
    awan(name, [
      'agent', '--control', url, ...(joinToken ? ['--join-token', joinToken] : []),
      '--driver', 'qemu', '--data-dir', hostDir(name), '--name', name, '--address', '127.0.0.1',
    ]);
  }

  /** Every process of a host: its agent's group, and what names its data dir (QEMUs, watchdog, NBD daemons). */
  const pidsOf = (name: string): number[] => {
    const own = pidsMentioning(`${hostDir(name)}/`);
    const bare = pidsMentioning(hostDir(name)).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(hostDir(name));
      } catch {
        return false;
      }
    });
    return [...new Set([...own, ...bare])];
  };

  async function killHost(name: string): Promise<number[]> {
    const agent = children.get(name);
    const pids = [...pidsOf(name), ...(agent?.pid ? [agent.pid] : [])];
    killGroup(agent);
    killPids(pids);
    await waitFor(() => pids.every((p) => !alive(p)), `the processes of ${name} to exit`, GONE_TIMEOUT_MS, 10);
    if (agent) await exited(agent);
    return pids;
  }

  async function close(): Promise<void> {
    // Agents first, so that nothing starts a QEMU while the others go.
    for (const name of [...hostNames, 'control']) {
      const c = children.get(name);
      if (!c) continue;
      killGroup(c);
      await Promise.race([exited(c), delay(GONE_TIMEOUT_MS)]);
    }
    const left = pidsMentioning(`${dir}/`);
    killPids(left);
    await waitFor(() => left.every((p) => !alive(p)), 'the cluster\'s processes to exit', GONE_TIMEOUT_MS, 20).catch((err: unknown) => console.error(String(err)));
    process.off('exit', killAllSync);
    const keep = process.env.AWAN_BENCH_KEEP_LOGS;
    if (keep) {
      // For a look at what happened: the processes' logs, nothing else (the disks are large).
      mkdirSync(keep, { recursive: true });
      for (const name of ['control', ...hostNames]) cpSync(join(dir, `${name}.log`), join(keep, `${name}.log`), { force: true });
    }
    removeTempDir(dir);
  }

  const cluster: QemuCluster = {
    dir, poolDir, hostNames, api, startControl, hosts, allReady, killHost,
    startAgent: (name) => startAgent(name),
    consoleOf(host, vmId) {
      try {
        return readFileSync(join(hostDir(host), 'qemu', 'vms', vmId, 'console.log'), 'utf8');
      } catch {
        return '';
      }
    },
    async waitTask(id, timeoutMs) {
      let task: { state: string; error?: unknown } | undefined;
      await waitFor(async () => {
        task = (await api<{ state: string; error?: unknown }>('GET', `/api/v1/tasks/${id}`)).body;
        return ['succeeded', 'failed', 'cancelled'].includes(task.state);
      }, `task ${id}`, timeoutMs, 100);
      return task!;
    },
    close,
  };
  try {
    await startControl({});
    for (const name of hostNames) {
      const join = await api<{ token: string }>('POST', '/api/v1/hosts/join-tokens');
      if (join.status !== 201) throw new Error(`join token: ${join.status} ${JSON.stringify(join.body)}`);
      startAgent(name, join.body.token);
    }
    await waitFor(allReady, `${hostNames.length} hosts ready`, UP_TIMEOUT_MS * 2, 200);
    return cluster;
  } catch (err) {
    for (const name of ['control', ...hostNames]) {
      const file = join(dir, `${name}.log`);
      try {
        console.error(`--- last lines of ${name}.log ---\n${readFileSync(file, 'utf8').trim().split('\n').slice(-15).join('\n')}`);
      } catch {
        // no log
      }
    }
    await close();
    throw err;
  }
}

export const imageDirsOf = (...files: string[]): string[] => [...new Set(files.map((f) => dirname(f)))];
