// A pool that is a directory of qcow2/raw files, made and grown with qemu-img and served over NBD by
// qemu-storage-daemon: a host's own local pool, or a shared directory every host mounts (NFS, CephFS).
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, rm, rmdir, statfs } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { DriverError } from '../../drivers/types.ts';
import { ensureDisk, exists, inspectImage, resizeVolume } from '../../drivers/qemu/images.ts';
import { freePort } from '../../drivers/qemu/migrate.ts';
import {
  type CreateVolume, PoolError, type PoolStats, type PoolType, type StoragePool, type VolumeExport, type VolumeInfo,
  checkSize, checkVolumeName,
} from './pool.ts';

const MiB = 1024 * 1024;
const EXPORT_READY_TIMEOUT_MS = 10_000;

export interface FilePoolOptions {
  type: PoolType;
  path: string;
  /** The qemu-storage-daemon binary. */
  storageDaemon?: string;
}

/** qemu-img's refusals become the pool's codes: a VM holding the image is `VOLUME_IN_USE`. */
function poolError(err: unknown): never {
  if (err instanceof PoolError) throw err;
  if (err instanceof DriverError) {
    if (/lock/i.test(err.message)) throw new PoolError('VOLUME_IN_USE', err.message);
    throw new PoolError('VOLUME_INVALID', err.message);
  }
  throw err;
}

export function createFilePool(opts: FilePoolOptions): StoragePool {
  const exports = new Map<string, { child: ChildProcess; result: VolumeExport }>();
  const fileOf = (name: string) => join(opts.path, checkVolumeName(name));

  async function info(name: string): Promise<VolumeInfo | undefined> {
    const path = fileOf(name);
    if (!(await exists(path))) return undefined;
    const i = await inspectImage(path).catch(poolError);
    if (i.format !== 'qcow2' && i.format !== 'raw') throw new PoolError('VOLUME_INVALID', `${path} is ${i.format}`);
    return { name, format: i.format, sizeMiB: Math.ceil(i.virtualSizeBytes / MiB), path };
  }

  async function stopExport(name: string): Promise<void> {
    const e = exports.get(name);
    if (!e) return;
    exports.delete(name);
    if (e.child.exitCode !== null || e.child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      e.child.once('exit', () => resolve());
      e.child.kill('SIGTERM');
      setTimeout(() => { e.child.kill('SIGKILL'); resolve(); }, 2000).unref();
    });
  }

  return {
    type: opts.type,
    path: opts.path,

    async stats(): Promise<PoolStats> {
      await mkdir(opts.path, { recursive: true });
      const s = await statfs(opts.path);
      // bavail: what an unprivileged writer (QEMU) may still use, not the root reserve.
      return { capacityMiB: Math.floor((s.blocks * s.bsize) / MiB), freeMiB: Math.floor((s.bavail * s.bsize) / MiB) };
    },

    info,

    async create(v: CreateVolume): Promise<VolumeInfo> {
      checkSize(v.sizeMiB);
      const path = fileOf(v.name);
      await ensureDisk({
        path, format: v.format, sizeMiB: v.sizeMiB,
        ...(v.backing ? { backingPath: v.backing.path, backingFormat: v.backing.format } : {}),
      }).catch(poolError);
      return (await info(v.name))!;
    },

    async grow(name: string, sizeMiB: number): Promise<VolumeInfo> {
      checkSize(sizeMiB);
      const now = await info(name);
      if (!now) throw new PoolError('VOLUME_NOT_FOUND', `no volume ${name} in ${opts.path}`);
      if (now.sizeMiB > sizeMiB) throw new PoolError('VOLUME_INVALID', `${name} is ${now.sizeMiB} MiB; shrinking to ${sizeMiB} MiB loses data`);
      if (now.sizeMiB === sizeMiB) return now;
      await resizeVolume(now.path, sizeMiB).catch(poolError);
      return (await info(name))!;
    },

    async delete(name: string): Promise<void> {
      const path = fileOf(name);
      await stopExport(name);
      await rm(path, { force: true });
      // The per-VM directory goes with its last volume; a directory still holding files stays.
      if (dirname(path) !== opts.path) await rmdir(dirname(path)).catch(() => undefined);
    },

    async export(name: string, address: string): Promise<VolumeExport> {
      const running = exports.get(name);
      if (running && running.child.exitCode === null) return running.result;
      const v = await info(name);
      if (!v) throw new PoolError('VOLUME_NOT_FOUND', `no volume ${name} in ${opts.path}`);
      const port = await freePort(address);
      const exportName = name.replaceAll('/', '-');
      const blockdev = { driver: v.format, 'node-name': 'vol', file: { driver: 'file', filename: v.path } };
      // --nbd-server must come before --export (FACTS.md).
      const child = spawn(opts.storageDaemon ?? 'qemu-storage-daemon', [
        '--blockdev', JSON.stringify(blockdev),
        '--nbd-server', `addr.type=inet,addr.host=${address},addr.port=${port}`,
        '--export', `type=nbd,id=vol,node-name=vol,name=${exportName},writable=on`,
      ], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()).slice(-2000));
      const failed = new Promise<never>((_, reject) => {
        child.once('error', (err) => reject(new PoolError('EXPORT_FAILED', `qemu-storage-daemon: ${err.message}`)));
        child.once('exit', (code) => reject(new PoolError('EXPORT_FAILED', `qemu-storage-daemon exited (${code}): ${stderr.trim()}`)));
      });
      failed.catch(() => undefined);
      const deadline = Date.now() + EXPORT_READY_TIMEOUT_MS;
      try {
        for (;;) {
          const up = await Promise.race([listening(address, port), failed]);
          if (up) break;
          if (Date.now() > deadline) throw new PoolError('EXPORT_FAILED', `the NBD server of ${name} did not listen within ${EXPORT_READY_TIMEOUT_MS} ms`);
          await new Promise((r) => setTimeout(r, 50));
        }
      } catch (err) {
        child.kill('SIGKILL');
        throw err;
      }
      const result = { nbd: `${address}:${port}`, exportName };
      exports.set(name, { child, result });
      return result;
    },

    unexport: stopExport,

    async close(): Promise<void> {
      await Promise.all([...exports.keys()].map(stopExport));
    },
  };
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
