// Checks every driver applies to a remote-memory request, so the simulator refuses what QEMU refuses.
import { DriverError, REMOTE_MEMORY_SLOTS, type RemoteMemoryTarget } from './types.ts';

export const sameRemoteTarget = (a: RemoteMemoryTarget | undefined, b: RemoteMemoryTarget | undefined) =>
  !!a && !!b && a.host === b.host && a.port === b.port && a.exportName === b.exportName;

/** Throws REMOTE_MEMORY_FAILED for a slot outside 0..7, a malformed target or size. */
export function checkRemoteMemory(slot: number, target?: RemoteMemoryTarget, sizeMiB?: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot >= REMOTE_MEMORY_SLOTS) {
    throw new DriverError('REMOTE_MEMORY_FAILED', `remote memory slot ${slot} is not one of 0..${REMOTE_MEMORY_SLOTS - 1}`);
  }
  if (target) {
    const ok = /^[A-Za-z0-9.:-]{1,255}$/.test(target.host) && Number.isInteger(target.port) && target.port > 0 && target.port < 65536
      && /^[A-Za-z0-9._-]{1,256}$/.test(target.exportName);
    if (!ok) throw new DriverError('REMOTE_MEMORY_FAILED', `bad remote memory target ${JSON.stringify(target)}`);
  }
  // A swap area needs more than its header page; 1 MiB is the least that makes sense.
  if (sizeMiB !== undefined && (!Number.isInteger(sizeMiB) || sizeMiB < 1)) {
    throw new DriverError('REMOTE_MEMORY_FAILED', `bad remote memory size ${sizeMiB} MiB`);
  }
}
