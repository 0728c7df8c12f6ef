// Remote memory with real QEMU: a donor's RAM (tmpfs image, qemu-storage-daemon) hot-plugged into a 256 MiB
// guest as swap lets a workload larger than the guest's RAM complete; detaching leaves nothing behind; a donor
// daemon that dies and comes back within reconnect-delay costs the guest nothing.
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { errorOf, execute } from '../../agent/executor.ts';
import type { MemoryLoan } from '../../agent/memory/lender.ts';
import { loanDir } from '../../agent/memory/tmpfs-lender.ts';
import { createFileStorage } from '../../agent/storage/index.ts';
import { type Command, parseControlMessage } from '../../protocol/messages.ts';
import { killMentioning, pidsMentioning } from '../../../test/support/processes.ts';
import { requireCommand } from '../../../test/support/system.ts';
import { until } from '../../../test/until.ts';
import type { DriverVmStatus, HypervisorDriver } from '../types.ts';
import { createQemuDriver } from './driver.ts';
import { GuestAgent } from './guest-agent.ts';
import { vmPaths } from './paths.ts';
import { QmpClient } from './qmp.ts';
import { guestSpec, requireGuest, tempDir, trackDrivers } from './test-support.ts';

const root = tempDir('rmem');
const drivers = trackDrivers(root);
const donorDir = `${root.path}/donor`;
const borrowerDir = `${root.path}/borrower`;
// Even when a test fails half-way: no daemon and no image of the donor stays (tmpfs is RAM).
after(() => {
  killMentioning(loanDir({ dataDir: donorDir }));
  rmSync(loanDir({ dataDir: donorDir }), { recursive: true, force: true });
});

/** More than the 256 MiB guest's RAM (it has ~218 MiB): refused outright without swap (FACTS.md). */
const WORKLOAD = 'dd if=/dev/zero of=/dev/null bs=400M count=1';
const LOAN_MIB = 512;

async function borrower(): Promise<HypervisorDriver> {
  const d = await createQemuDriver({ dataDir: borrowerDir, address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/ });
  drivers.add(d);
  return d;
}

/** Commands as control sends them, schema-checked first, against a host's driver and storage. */
function host(driver: HypervisorDriver, dataDir: string) {
  const storage = createFileStorage(dataDir);
  return async (command: Command): Promise<unknown> => {
    const parsed = parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', epoch: 1, command }));
    assert.ok(parsed.ok, parsed.ok ? '' : parsed.error);
    return execute(command, { driver, storage, consoles: new Set(), signal: new AbortController().signal, progress: () => undefined, address: async () => '127.0.0.1' });
  };
}

const guest = (vmId: string) => new GuestAgent(vmPaths(borrowerDir, vmId).guestAgent);
const daemons = () => pidsMentioning(loanDir({ dataDir: donorDir }), 'qemu-storage-daemon');

/** What QEMU itself holds of slot 0, asked over a QMP connection of our own while the driver is closed. */
async function qemuLeftovers(vmId: string): Promise<string[]> {
  const qmp = await QmpClient.connect(vmPaths(borrowerDir, vmId).qmp, { timeoutMs: 10_000 });
  try {
    const nodes = (await qmp.execute('query-named-block-nodes')) as Array<{ 'node-name': string }>;
    const device = await qmp.execute('qom-get', { path: '/machine/peripheral/rmem0', property: 'type' }).then(() => ['rmem0'], () => []);
    return [...nodes.map((n) => n['node-name']).filter((n) => n.startsWith('rmem')), ...device];
  } finally {
    qmp.close();
  }
}

describe('remote memory (QEMU)', { timeout: 600_000 }, () => {
  test('a workload larger than the guest fails without remote memory, completes with it, and detach returns everything', async () => {
    requireGuest();
    requireCommand('qemu-storage-daemon', 'apt-get install qemu-system-x86');
    let driver = await borrower();
    const donor = host(driver, donorDir);
    await driver.start(guestSpec('rm1', { maxMemoryMiB: 256 }));

    const before = await guest('rm1').exec(WORKLOAD, 60_000);
    assert.notEqual(before.exitCode, 0, 'the workload must not fit the guest alone');
    assert.match(before.stderr, /out of memory/);

    const loan = (await donor({ op: 'memoryExport', name: 'loans/rm1', sizeMiB: LOAN_MIB })) as MemoryLoan;
    assert.deepEqual(await donor({ op: 'memoryExport', name: 'loans/rm1', sizeMiB: LOAN_MIB }), loan, 'idempotent');
    assert.equal(daemons().length, 1);

    const borrowerHost = host(driver, borrowerDir);
    const attached = (await borrowerHost({ op: 'remoteMemoryAttach', vmId: 'rm1', slot: 0, target: loan.target, sizeMiB: LOAN_MIB })) as DriverVmStatus;
    assert.deepEqual(attached.remoteMemory, [{ slot: 0, target: loan.target, sizeMiB: LOAN_MIB, state: 'active' }]);
    assert.ok((attached.swapTotalMiB ?? 0) >= LOAN_MIB - 1, `the guest swaps to it: ${attached.swapTotalMiB} MiB`);
    const swaps = await guest('rm1').exec('cat /proc/swaps; cat /sys/block/vd*/serial', 10_000);
    assert.match(swaps.stdout, /\/dev\/vd\w+\s+partition\s+\d+/);
    // Again: nothing changes.
    assert.deepEqual(((await borrowerHost({ op: 'remoteMemoryAttach', vmId: 'rm1', slot: 0, target: loan.target, sizeMiB: LOAN_MIB })) as DriverVmStatus).remoteMemory, attached.remoteMemory);

    const withLoan = await guest('rm1').exec(`${WORKLOAD} && echo DONE`, 300_000);
    assert.equal(withLoan.exitCode, 0, withLoan.stderr);
    assert.match(withLoan.stdout, /DONE/);
    const during = await driver.status('rm1');
    assert.ok((during.majorFaults ?? 0) > 0, `the guest read pages back from swap: ${during.majorFaults} major faults`);

    const detached = (await borrowerHost({ op: 'remoteMemoryDetach', vmId: 'rm1', slot: 0 })) as DriverVmStatus;
    assert.equal(detached.remoteMemory, undefined);
    assert.doesNotMatch((await guest('rm1').exec('cat /proc/swaps', 10_000)).stdout, /\/dev\/vd/);
    await borrowerHost({ op: 'remoteMemoryDetach', vmId: 'rm1', slot: 0 });
    await borrowerHost({ op: 'remoteMemoryDetach', vmId: 'gone', slot: 0 });
    await donor({ op: 'memoryUnexport', name: 'loans/rm1' });
    await donor({ op: 'memoryUnexport', name: 'loans/rm1' });
    assert.deepEqual(daemons(), []);
    assert.equal(existsSync(loanDir({ dataDir: donorDir })), false, 'no image left in /dev/shm');

    // QEMU holds no device and no NBD node of it (asked with the driver closed: QMP takes one client).
    await driver.close();
    drivers.delete(driver);
    assert.deepEqual(await qemuLeftovers('rm1'), []);
    driver = await borrower();
    assert.equal((await driver.status('rm1')).remoteMemory, undefined);
  });

  test('a donor daemon killed and restarted within reconnect-delay loses the guest nothing', async () => {
    const driver = await borrower();
    const donor = host(driver, donorDir);
    const borrowerHost = host(driver, borrowerDir);
    await driver.start(guestSpec('rm2', { maxMemoryMiB: 256 }));
    const loan = (await donor({ op: 'memoryExport', name: 'loans/rm2', sizeMiB: LOAN_MIB })) as MemoryLoan;
    await borrowerHost({ op: 'remoteMemoryAttach', vmId: 'rm2', slot: 0, target: loan.target, sizeMiB: LOAN_MIB });

    // 240 MiB in a guest tmpfs, more than the guest's RAM, so much of it lives on the donor: 8 MiB of random
    // bytes over and over (random data is slow to make under TCG; a page lost or zeroed still shows).
    const write = await guest('rm2').exec(
      'mkdir -p /mnt/t && mount -t tmpfs -o size=300m tmpfs /mnt/t && dd if=/dev/urandom of=/mnt/t/r bs=1M count=8 2>/dev/null && '
        + '(for i in $(seq 30); do cat /mnt/t/r; done) | tee /mnt/t/data | md5sum && rm /mnt/t/r',
      300_000,
    );
    assert.equal(write.exitCode, 0, write.stderr);
    const sum = write.stdout.split(' ')[0];
    const swapped = await until(async () => {
      const s = await driver.status('rm2');
      return (s.swapUsedMiB ?? 0) > 20 ? s : undefined;
    }, { timeoutMs: 30_000, intervalMs: 500, what: 'pages on the donor' });
    assert.ok(swapped.swapUsedMiB! > 20);

    // The donor dies while the guest reads its pages back; it comes back (same image, same port) 3 s later.
    for (const pid of daemons()) process.kill(pid, 'SIGKILL');
    await until(() => daemons().length === 0, { timeoutMs: 5000, what: 'the donor daemon gone' });
    const reread = guest('rm2').exec('md5sum /mnt/t/data', 300_000);
    await new Promise((r) => setTimeout(r, 3000));
    assert.deepEqual(await donor({ op: 'memoryExport', name: 'loans/rm2', sizeMiB: LOAN_MIB }), loan, 'served again at the same address');
    const check = await reread;
    assert.equal(check.exitCode, 0, check.stderr);
    assert.equal(check.stdout.split(' ')[0], sum, 'every page came back intact');
    assert.equal((await driver.status('rm2')).state, 'running');

    await guest('rm2').exec('rm -f /mnt/t/data', 60_000);
    await borrowerHost({ op: 'remoteMemoryDetach', vmId: 'rm2', slot: 0 });
    await donor({ op: 'memoryUnexport', name: 'loans/rm2' });
    assert.deepEqual(daemons(), []);
  });

  test('an export that does not answer fails the attach and leaves nothing plugged', async () => {
    const driver = await borrower();
    await driver.start(guestSpec('rm3', { maxMemoryMiB: 256 }));
    const err = await host(driver, borrowerDir)({ op: 'remoteMemoryAttach', vmId: 'rm3', slot: 1, target: { host: '127.0.0.1', port: 9, exportName: 'none' }, sizeMiB: 64 })
      .catch((e: unknown) => e);
    assert.equal(errorOf(err).code, 'REMOTE_MEMORY_FAILED');
    const status = await driver.status('rm3');
    assert.equal(status.remoteMemory?.[0]?.state, 'failed');
    await driver.detachRemoteMemory('rm3', 1);
    assert.equal((await driver.status('rm3')).remoteMemory, undefined);
  });
});
