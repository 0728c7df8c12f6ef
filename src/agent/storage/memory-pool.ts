// The simulator's pools: volumes are sizes in a map, exports are made-up addresses. Same contract as the
// file pool, so control's storage logic is tested without files.
import {
  type CreateVolume, PoolError, type PoolStats, type PoolType, type StoragePool, type VolumeExport, type VolumeInfo,
  checkSize, checkVolumeName,
} from './pool.ts';

export interface MemoryPoolOptions {
  type: PoolType;
  path: string;
  capacityMiB?: number;
}

export interface MemoryPool extends StoragePool {
  /** The names of the volumes it holds (tests). */
  names(): string[];
}

export function createMemoryPool(opts: MemoryPoolOptions): MemoryPool {
  const volumes = new Map<string, VolumeInfo>();
  const exports = new Map<string, VolumeExport>();
  const capacityMiB = opts.capacityMiB ?? 1024 * 1024;
  let nextPort = 20_000;
  const used = () => [...volumes.values()].reduce((n, v) => n + v.sizeMiB, 0);
  const fits = (growMiB: number) => {
    if (growMiB > capacityMiB - used()) throw new PoolError('POOL_FULL', `${opts.path} has ${capacityMiB - used()} MiB free; ${growMiB} MiB more asked`);
  };
  return {
    type: opts.type,
    path: opts.path,
    names: () => [...volumes.keys()],
    async stats(): Promise<PoolStats> {
      return { capacityMiB, freeMiB: capacityMiB - used() };
    },
    async info(name) {
      return volumes.get(checkVolumeName(name));
    },
    async create(v: CreateVolume) {
      checkSize(v.sizeMiB);
      const name = checkVolumeName(v.name);
      const existing = volumes.get(name);
      if (existing) {
        if (existing.format !== v.format) throw new PoolError('VOLUME_INVALID', `${name} is ${existing.format}, not ${v.format}`);
        return this.grow(name, Math.max(existing.sizeMiB, v.sizeMiB));
      }
      if (v.backing && v.format !== 'qcow2') throw new PoolError('VOLUME_INVALID', `${name}: only qcow2 volumes can have a backing image`);
      fits(v.sizeMiB);
      const info = { name, format: v.format, sizeMiB: v.sizeMiB, path: `${opts.path}/${name}` };
      volumes.set(name, info);
      return info;
    },
    async grow(name, sizeMiB) {
      checkSize(sizeMiB);
      const v = volumes.get(checkVolumeName(name));
      if (!v) throw new PoolError('VOLUME_NOT_FOUND', `no volume ${name} in ${opts.path}`);
      if (v.sizeMiB > sizeMiB) throw new PoolError('VOLUME_INVALID', `${name} is ${v.sizeMiB} MiB; shrinking to ${sizeMiB} MiB loses data`);
      fits(sizeMiB - v.sizeMiB);
      v.sizeMiB = sizeMiB;
      return { ...v };
    },
    async delete(name) {
      exports.delete(name);
      volumes.delete(checkVolumeName(name));
    },
    async export(name, address) {
      if (!volumes.has(checkVolumeName(name))) throw new PoolError('VOLUME_NOT_FOUND', `no volume ${name} in ${opts.path}`);
      let e = exports.get(name);
      if (!e) exports.set(name, (e = { nbd: `${address}:${nextPort++}`, exportName: name.replaceAll('/', '-') }));
      return e;
    },
    async unexport(name) {
      exports.delete(name);
    },
    async close() {
      exports.clear();
    },
  };
}
