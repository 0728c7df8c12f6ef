// One qemu-storage-daemon serving one volume over NBD: started detached (a replica's export must outlive an
// agent crash, or the primary's mirror degrades), found again by its command line, stopped by its pid.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { freePort } from '../../drivers/qemu/migrate.ts';
import { PoolError, type VolumeExport } from './pool.ts';

const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5000;

export interface NbdDaemon {
  pid: number;
  result: VolumeExport;
}

export interface StartExport {
  binary: string;
  /** The image file and its format. */
  path: string;
  format: 'qcow2' | 'raw';
  address: string;
  exportName: string;
  /** Flush every write before it is acknowledged: a replica's copy is then as durable as the primary's. */
  writethrough?: boolean;
  /** The port to try first (a restarted export keeps its address, so clients reconnect); else a free one. */
  port?: number;
}

function cmdlineOf(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
}

function isLive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The node the daemon serves: its JSON names the image file, which is how a later agent recognises it. */
const blockdevOf = (path: string, format: string) => JSON.stringify({ driver: format, 'node-name': 'vol', file: { driver: 'file', filename: path } });

/**
 * A daemon an earlier agent (or this one) left serving `path`: its pid and export, read back from its
 * command line. Several (a race, a crash mid-start) are all returned; the caller keeps at most one.
 */
export function findDaemons(path: string, format: string): NbdDaemon[] {
  const blockdev = blockdevOf(path, format);
  const found: NbdDaemon[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const argv = cmdlineOf(pid);
    if (!argv || !argv[0]?.includes('qemu-storage-daemon') || !argv.includes(blockdev) || !isLive(pid)) continue;
    const server = argv[argv.indexOf('--nbd-server') + 1] ?? '';
    const exp = argv[argv.indexOf('--export') + 1] ?? '';
    const host = /addr\.host=([^,]+)/.exec(server)?.[1];
    const port = /addr\.port=(\d+)/.exec(server)?.[1];
    const name = /(?:^|,)name=([^,]+)/.exec(exp)?.[1];
    if (host && port && name) found.push({ pid, result: { nbd: `${host}:${port}`, exportName: name } });
  }
  return found;
}

export async function stopDaemon(pid: number): Promise<void> {
  if (!isLive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM'); // the daemon flushes and closes its image on SIGTERM
  } catch {
    return;
  }
  const deadline = Date.now() + STOP_GRACE_MS;
  while (isLive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (isLive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    while (isLive(pid)) await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts a daemon on a free port; a port taken between choosing and binding it means another try. */
export async function startDaemon(opts: StartExport): Promise<NbdDaemon> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const port = attempt === 0 && opts.port ? opts.port : await freePort(opts.address);
      return await startOnce(opts, port);
    } catch (err) {
      last = err;
      if (!(err instanceof PoolError) || !/address already in use|Failed to bind/i.test(err.message)) throw err;
    }
  }
  throw last;
}

async function startOnce(opts: StartExport, port: number): Promise<NbdDaemon> {
  const exportOpts = `type=nbd,id=vol,node-name=vol,name=${opts.exportName},writable=on${opts.writethrough ? ',writethrough=on' : ''}`;
  // --nbd-server must come before --export (FACTS.md). Its own session: signals to the agent's group spare it.
  const child = spawn(opts.binary, [
    '--blockdev', blockdevOf(opts.path, opts.format),
    '--nbd-server', `addr.type=inet,addr.host=${opts.address},addr.port=${port}`,
    '--export', exportOpts,
  ], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-2000);
  });
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (err) => reject(new PoolError('EXPORT_FAILED', `qemu-storage-daemon: ${err.message}`)));
    child.once('exit', (code, signal) => reject(new PoolError('EXPORT_FAILED', `qemu-storage-daemon exited (${code ?? signal}): ${stderr.trim()}`)));
  });
  failed.catch(() => undefined);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  try {
    for (;;) {
      if (await Promise.race([listening(opts.address, port), failed])) break;
      if (Date.now() > deadline) throw new PoolError('EXPORT_FAILED', `the NBD server of ${opts.path} did not listen within ${READY_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  // The agent may exit (or crash) while the export serves on: nothing of the child may keep it alive.
  child.unref();
  (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  return { pid: child.pid!, result: { nbd: `${opts.address}:${port}`, exportName: opts.exportName } };
}

function listening(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port }, () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
