// VM disks on the shared pool: where each VM's volume lives, growing it, and removing it with the VM.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { exists, resizeVolume } from '../../../drivers/qemu/images.ts';
import { DriverError } from '../../../drivers/types.ts';
import { AppError } from '../../errors.ts';

export type Volumes = ReturnType<typeof createVolumes>;

export function createVolumes(poolDir: string) {
  const dirOf = (vmId: string) => join(poolDir, 'vms', vmId);
  const diskPath = (vmId: string) => join(dirOf(vmId), 'disk0.qcow2');
  return {
    diskPath,
    /** Grows the VM's disk if it exists yet; a disk made later is made at the new size. */
    async grow(vmId: string, sizeGiB: number): Promise<void> {
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
