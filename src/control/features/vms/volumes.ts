// VM disks on the shared pool: where each VM's volume lives, growing it, and removing it with the VM.
import { mkdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { exists, resizeVolume } from '../../../drivers/qemu/images.ts';
import { DriverError } from '../../../drivers/types.ts';
import { AppError } from '../../errors.ts';

export type Volumes = ReturnType<typeof createVolumes>;

export function createVolumes(poolDir: string) {
  const dirOf = (vmId: string) => join(poolDir, 'vms', vmId);
  const diskPath = (vmId: string) => join(dirOf(vmId), 'disk0.qcow2');
  /** Free space of the pool's file system for unprivileged writers, in whole GiB. */
  const poolFreeGiB = async (): Promise<number> => {
    await mkdir(poolDir, { recursive: true });
    const s = await statfs(poolDir);
    return Math.floor((s.bavail * s.bsize) / 1024 ** 3);
  };
  return {
    diskPath,
    /**
     * Grows the VM's disk if it exists yet; a disk made later is made at the new size. The growth must fit
     * in what the pool has free: qcow2 is thin, but a guest that fills its larger disk would fill the pool
     * under every VM on it.
     */
    async grow(vmId: string, fromGiB: number, sizeGiB: number): Promise<void> {
      const freeGiB = await poolFreeGiB();
      if (sizeGiB - fromGiB > freeGiB) {
        throw new AppError('NO_CAPACITY', `growing the disk by ${sizeGiB - fromGiB} GiB does not fit: the pool has ${freeGiB} GiB free`, { freeGiB, growGiB: sizeGiB - fromGiB });
      }
      const path = diskPath(vmId);
      if (!(await exists(path))) return;
      try {
        await resizeVolume(path, sizeGiB * 1024);
      } catch (err) {
        if (err instanceof DriverError) throw new AppError('UNSUPPORTED', `cannot resize the disk: ${err.message}`);
        throw err;
      }
    },
    /** The VM is gone: so are its volumes (images stay). */
    async remove(vmId: string): Promise<void> {
      await rm(dirOf(vmId), { recursive: true, force: true });
    },
  };
}
