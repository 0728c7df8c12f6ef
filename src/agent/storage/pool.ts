// The storage pool interface of a host: where volumes live and the four things done to them (create, grow,
// delete, export). A pool type (a directory of files here; NFS or Ceph RBD later) implements it; control
// names the pool by type and path in each command and never touches its files.
import { isAbsolute, normalize } from 'node:path';

export type PoolType = 'local' | 'shared';
export type VolumeFormat = 'qcow2' | 'raw';

/** A pool as control names it in a command. */
export interface PoolRef {
  type: PoolType;
  path: string;
}

export interface PoolStats {
  capacityMiB: number;
  freeMiB: number;
}

export interface VolumeInfo {
  name: string;
  format: VolumeFormat;
  sizeMiB: number;
  /** Where a VM on this host opens it (a file path for file pools). */
  path: string;
}

export interface CreateVolume {
  /** Relative to the pool, e.g. `vms/<vmId>/disk0.qcow2`. */
  name: string;
  format: VolumeFormat;
  sizeMiB: number;
  /** A qcow2 overlay on this image (read only, outside or inside the pool). */
  backing?: { path: string; format: VolumeFormat };
}

export interface VolumeExport {
  /** host:port of the NBD server. */
  nbd: string;
  exportName: string;
}

export interface ExportOptions {
  /** Every write is flushed before it is acknowledged (a synchronous replica's export). */
  writethrough?: boolean;
}

export interface StoragePool {
  readonly type: PoolType;
  readonly path: string;
  stats(): Promise<PoolStats>;
  info(name: string): Promise<VolumeInfo | undefined>;
  /** Idempotent: an existing volume of the same format is kept (and grown to the size when smaller). */
  create(v: CreateVolume): Promise<VolumeInfo>;
  /** Idempotent: a volume already this large is left alone; shrinking is refused. */
  grow(name: string, sizeMiB: number): Promise<VolumeInfo>;
  /** Idempotent: a missing volume is already deleted. */
  delete(name: string): Promise<void>;
  /**
   * Serves the volume over NBD for another host; again while exported returns the same export, also after
   * an agent restart (file pools find the daemon that still serves it).
   */
  export(name: string, address: string, opts?: ExportOptions): Promise<VolumeExport>;
  unexport(name: string): Promise<void>;
  /** Ends exports and releases what the pool holds. */
  close(): Promise<void>;
}

/** Errors a pool throws carry a stable code that becomes the command's error code. */
export class PoolError extends Error {
  constructor(
    readonly code: 'VOLUME_INVALID' | 'VOLUME_NOT_FOUND' | 'VOLUME_IN_USE' | 'POOL_FULL' | 'POOL_NOT_FOUND' | 'EXPORT_FAILED',
    message: string,
  ) {
    super(message);
    this.name = 'PoolError';
  }
}

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** A volume name stays inside its pool: relative, no `..`, plain segments. */
export function checkVolumeName(name: string): string {
  const n = normalize(name);
  if (isAbsolute(n) || n !== name || !n.split('/').every((s) => SEGMENT.test(s) && s !== '..')) {
    throw new PoolError('VOLUME_INVALID', `volume name ${name} must be a relative path of plain names inside the pool`);
  }
  return n;
}

export function checkSize(sizeMiB: number): void {
  if (!Number.isInteger(sizeMiB) || sizeMiB <= 0) throw new PoolError('VOLUME_INVALID', `bad size ${sizeMiB} MiB`);
}
