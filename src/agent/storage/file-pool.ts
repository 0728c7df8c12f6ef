// A pool that is a directory of qcow2/raw files, made and grown with qemu-img and served over NBD by
// qemu-storage-daemon: a host's own local pool, or a shared directory every host mounts (NFS, CephFS).
import { mkdir, rm, rmdir, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DriverError } from '../../drivers/types.ts';
import { ensureDisk, exists, inspectImage, resizeVolume } from '../../drivers/qemu/images.ts';
import { type NbdDaemon, findDaemons, startDaemon, stopDaemon } from './nbd-export.ts';
import {
  type CreateVolume, type ExportOptions, PoolError, type PoolStats, type PoolType, type StoragePool, type VolumeExport, type VolumeInfo,
  checkSize, checkVolumeName,
} from './pool.ts';

const MiB = 1024 * 1024;

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
  const exports = new Map<string, NbdDaemon>();
  const fileOf = (name: string) => join(opts.path, checkVolumeName(name));

  async function info(name: string): Promise<VolumeInfo | undefined> {
    const path = fileOf(name);
    if (!(await exists(path))) return undefined;
    const i = await inspectImage(path).catch(poolError);
    if (i.format !== 'qcow2' && i.format !== 'raw') throw new PoolError('VOLUME_INVALID', `${path} is ${i.format}`);
    return { name, format: i.format, sizeMiB: Math.ceil(i.virtualSizeBytes / MiB), path };
  }

  /** This host's daemon serving the volume, if one runs (started by this agent or an earlier one). */
  async function runningExport(name: string): Promise<NbdDaemon | undefined> {
    const known = exports.get(name);
    const v = await info(name);
    if (!v) return undefined;
    const [first, ...extra] = known && findDaemons(v.path, v.format).some((d) => d.pid === known.pid)
      ? [known]
      : findDaemons(v.path, v.format);
    // Two daemons cannot both hold the image's write lock; should a race have left more, one is enough.
    for (const d of extra) if (d.pid !== first?.pid) await stopDaemon(d.pid);
    if (first) exports.set(name, first);
    else exports.delete(name);
    return first;
  }

  async function stopExport(name: string): Promise<void> {
    const known = exports.get(name);
    exports.delete(name);
    const v = await info(name).catch(() => undefined);
    const pids = new Set([...(known ? [known.pid] : []), ...(v ? findDaemons(v.path, v.format).map((d) => d.pid) : [])]);
    await Promise.all([...pids].map(stopDaemon));
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

    async export(name: string, address: string, exportOpts: ExportOptions = {}): Promise<VolumeExport> {
      const running = await runningExport(name);
      if (running) return running.result;
      const v = await info(name);
      if (!v) throw new PoolError('VOLUME_NOT_FOUND', `no volume ${name} in ${opts.path}`);
      const daemon = await startDaemon({
        binary: opts.storageDaemon ?? 'qemu-storage-daemon', path: v.path, format: v.format, address,
        exportName: name.replaceAll('/', '-'), writethrough: exportOpts.writethrough,
      });
      exports.set(name, daemon);
      return daemon.result;
    },

    unexport: stopExport,

    async close(): Promise<void> {
      await Promise.all([...exports.keys()].map(stopExport));
    },
  };
}
