// Memory loans on the donor: a swap image on tmpfs served by a detached daemon, found again by a new agent,
// refused under the reserve, and gone without a trace when returned; the simulator keeps the same contract.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { createSimDriver } from '../../drivers/sim/index.ts';
import type { HypervisorDriver } from '../../drivers/types.ts';
import { tempDir } from '../../drivers/qemu/test-support.ts';
import { killMentioning, pidsMentioning } from '../../../test/support/processes.ts';
import { requireCommand } from '../../../test/support/system.ts';
import { errorOf, execute } from '../executor.ts';
import { createFileStorage, createMemoryStorage, type HostStorage } from '../storage/index.ts';
import { loanDir } from './tmpfs-lender.ts';
import type { Command } from '../../protocol/messages.ts';
import type { MemoryLoan } from './lender.ts';

const root = tempDir('lend');
after(() => {
  killMentioning(loanDir({ dataDir: root.path }));
  rmSync(loanDir({ dataDir: root.path }), { recursive: true, force: true });
  root.remove();
});

function donor(storage: HostStorage, driver: HypervisorDriver, memoryReserveMiB = 256) {
  return (command: Command) =>
    execute(command, {
      driver, storage, consoles: new Set(), signal: new AbortController().signal, progress: () => undefined,
      address: async () => '127.0.0.1', memoryReserveMiB,
    });
}

describe('tmpfs memory loans', () => {
  test('a loan is a swap image in RAM served over NBD, found again after a restart, and freed on return', async () => {
    requireCommand('qemu-storage-daemon', 'apt-get install qemu-system-x86');
    const driver = createSimDriver({ hostname: 'donor', memoryMiB: 64 * 1024 });
    const dir = loanDir({ dataDir: root.path });
    const run = donor(createFileStorage(root.path), driver);
    const loan = (await run({ op: 'memoryExport', name: 'loans/vm1', sizeMiB: 16 })) as MemoryLoan;
    assert.equal(loan.sizeMiB, 16);
    assert.equal(loan.target.host, '127.0.0.1');
    assert.equal(loan.target.exportName, 'rmem-loans-vm1');
    assert.ok(dir.startsWith('/dev/shm/awan-'));
    const image = readFileSync(`${dir}/${readdirSync(dir).find((f) => f.endsWith('.img'))}`);
    assert.equal(image.length, 16 * 1024 * 1024);
    assert.equal(image.subarray(4086, 4096).toString('latin1'), 'SWAPSPACE2');
    assert.equal(image.subarray(1052, 1061).toString('latin1'), 'awan-rmem');
    assert.equal(pidsMentioning(dir, 'qemu-storage-daemon').length, 1);

    // A new agent on the same data dir (a restart) answers the same target from the daemon still running.
    const again = donor(createFileStorage(root.path), driver);
    assert.deepEqual(await again({ op: 'memoryExport', name: 'loans/vm1', sizeMiB: 16 }), loan);
    assert.equal(await createFileStorage(root.path).memory.lentMiB(), 16);

    // A daemon that died is served again on its old port, from the same image (the guest's pages are in it).
    for (const pid of pidsMentioning(dir, 'qemu-storage-daemon')) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await again({ op: 'memoryExport', name: 'loans/vm1', sizeMiB: 16 }), loan);

    await again({ op: 'memoryUnexport', name: 'loans/vm1' });
    await again({ op: 'memoryUnexport', name: 'loans/vm1' });
    assert.equal(pidsMentioning(dir, 'qemu-storage-daemon').length, 0);
    assert.equal(existsSync(dir), false);
  });

  test('a loan that would leave the donor under its reserve is refused with DONOR_RESERVE', async () => {
    const driver = createSimDriver({ hostname: 'donor', memoryMiB: 64 * 1024 });
    const storage = createFileStorage(root.path);
    const free = (await driver.facts()).memoryFreeMiB;
    const err = await donor(storage, driver, 256)({ op: 'memoryExport', name: 'big', sizeMiB: free - 100 }).catch((e: unknown) => e);
    assert.equal(errorOf(err).code, 'DONOR_RESERVE');
    assert.equal(existsSync(loanDir({ dataDir: root.path })), false);
  });
});

describe('simulated memory loans', () => {
  test('same answers without files; lent memory counts as used on the donor', async () => {
    const driver = createSimDriver({ hostname: 'donor', memoryMiB: 4096 });
    const storage = createMemoryStorage().forHost('/sim/donor');
    const run = donor(storage, driver);
    const loan = (await run({ op: 'memoryExport', name: 'loan1', sizeMiB: 1024 })) as MemoryLoan;
    assert.deepEqual(await run({ op: 'memoryExport', name: 'loan1', sizeMiB: 1024 }), loan);
    assert.equal(await storage.memory.lentMiB(), 1024);
    assert.equal(await storage.memory.hostFreeMiB(4096), 3072);
    const refused = await run({ op: 'memoryExport', name: 'loan2', sizeMiB: 3000 }).catch((e: unknown) => e);
    assert.equal(errorOf(refused).code, 'DONOR_RESERVE');
    await run({ op: 'memoryUnexport', name: 'loan1' });
    assert.equal(await storage.memory.lentMiB(), 0);
  });
});
