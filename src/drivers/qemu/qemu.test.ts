// The shared driver contract against real QEMU: two driver instances (two data dirs) on this machine.
import { after } from 'node:test';
import { join } from 'node:path';
import { driverContract } from '../../../test/drivers/contract.ts';
import { createQemuDriver } from './index.ts';
import { guestSpec, killProcessesMentioning, requireGuest, tempDir } from './test-support.ts';

const dirs: Array<{ path: string; remove: () => void }> = [];

after(() => {
  // Whatever a failed test left behind: its QEMUs (matched by their temp dir, killed by pid) and files.
  for (const dir of dirs) {
    killProcessesMentioning(dir.path);
    dir.remove();
  }
});

driverContract(
  'qemu',
  async () => {
    requireGuest();
    const dir = tempDir('qc');
    dirs.push(dir);
    const opts = { address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/, stopTimeoutMs: 10_000 };
    const driver = await createQemuDriver({ ...opts, dataDir: join(dir.path, 'a'), hostname: 'qemu-a' });
    const peer = await createQemuDriver({ ...opts, dataDir: join(dir.path, 'b'), hostname: 'qemu-b' }).catch(async (err: unknown) => {
      await driver.close();
      throw err;
    });
    return {
      driver,
      peer,
      spec: (id) => guestSpec(id),
      cleanup: async () => {
        await driver.close();
        await peer.close();
        killProcessesMentioning(dir.path);
        dir.remove();
      },
    };
  },
  // Balloon and virtio-mem land on whole MiB here, but leave room for a page or two in flight.
  { timeoutMs: 120_000, memoryToleranceMiB: 2 },
);
