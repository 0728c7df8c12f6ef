// Synchronous disk replicas with real QEMU: a replica host's agent storage serves the copy over NBD
// (qemu-storage-daemon), the primary's QEMU driver mirrors into it; both on 127.0.0.1.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { execute } from '../../agent/executor.ts';
import { createFileStorage, localPoolPath, type HostStorage } from '../../agent/storage/index.ts';
import { type Command, parseControlMessage } from '../../protocol/messages.ts';
import type { DiskSpec, DriverVmStatus, HypervisorDriver, MigrationTarget, ReplicaState, ReplicaTarget } from '../types.ts';
import { createQemuDriver, type QemuDriverOptions } from './index.ts';
import { vmPaths } from './paths.ts';
import { guestSpec, lastGuestUptime, requireGuest, requireQemu, tempDir, trackDrivers } from './test-support.ts';
import { killMentioning, pidsMentioning } from '../../../test/support/processes.ts';
import { requireCommand } from '../../../test/support/system.ts';
import { until } from '../../../test/until.ts';

const root = tempDir('rep');
const drivers = trackDrivers(root);
const storages = new Set<HostStorage>();
afterEach(async () => {
  for (const s of storages) await s.close();
  storages.clear();
  killMentioning(root.path, 'qemu-storage-daemon');
});

const T = { timeout: 600_000 };
const SIZE_MIB = 64;
const MiB = 1024 * 1024;

function requireTools(): void {
  requireQemu();
  requireCommand('qemu-storage-daemon', 'apt-get install qemu-system-x86');
  requireGuest();
}

async function primary(dataDir: string, extra: Partial<QemuDriverOptions> = {}): Promise<HypervisorDriver> {
  const driver = await createQemuDriver({ dataDir, address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/, ...extra });
  drivers.add(driver);
  return driver;
}

/** The replica host: its agent storage, driven by commands as control sends them (schema-checked first). */
function replicaHost(dataDir: string, driver: HypervisorDriver) {
  const storage = createFileStorage(dataDir);
  storages.add(storage);
  const pool = { type: 'local' as const, path: localPoolPath(dataDir) };
  const run = async (command: Command): Promise<unknown> => {
    const parsed = parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', epoch: 1, command }));
    assert.ok(parsed.ok, parsed.ok ? '' : parsed.error);
    assert.equal(parsed.message.type, 'command');
    const checked = parsed.message.type === 'command' ? parsed.message.command : command;
    return execute(checked, {
      driver, consoles: new Set(), signal: new AbortController().signal, progress: () => undefined, storage,
      address: async () => '127.0.0.1',
    });
  };
  return {
    pool,
    run,
    imagePath: (name: string) => join(pool.path, name),
    serve: async (name: string) =>
      ((await run({ op: 'replicaExport', pool, name, format: 'qcow2', sizeMiB: SIZE_MIB })) as { replica: ReplicaTarget }).replica,
    unserve: (name: string, del = false) => run({ op: 'replicaUnexport', pool, name, ...(del ? { delete: true } : {}) }),
  };
}

const daemonsOf = (dataDir: string) => pidsMentioning(dataDir, 'qemu-storage-daemon');

async function replicaState(driver: HypervisorDriver, vmId: string, state: ReplicaState): Promise<DriverVmStatus> {
  return until(async () => {
    const s = await driver.status(vmId);
    return s.replicas?.[0]?.state === state ? s : undefined;
  }, { timeoutMs: 300_000, intervalMs: 200, what: `replica of ${vmId} ${state}` });
}

/** Runs a shell line in the guest and waits for `marker` in what the console printed after it. */
async function inGuest(driver: HypervisorDriver, vmId: string, line: string, marker: string): Promise<void> {
  const from = (await driver.consoleHistory(vmId)).length;
  await driver.consoleWrite(vmId, `${line}\n`);
  await until(async () => (await driver.consoleHistory(vmId)).slice(from).includes(marker), { timeoutMs: 300_000, intervalMs: 200, what: marker });
}

/** Writes `bytes` of the repeated 16-byte `word\n` at the start of the guest's disk, flushed, and waits for it. */
async function guestWrites(driver: HypervisorDriver, vmId: string, word: string, bytes: number, n: number): Promise<Buffer> {
  assert.equal(word.length, 15);
  await inGuest(driver, vmId, `yes ${word} | head -c ${bytes} | dd of=/dev/vda bs=65536 conv=fsync 2>/dev/null; echo wrote-$((${n}*1))`, `wrote-${n}`);
  return Buffer.from(`${word}\n`.repeat(bytes / 16));
}

/** The guest-visible first `bytes` of an image, read without its lock. */
function readImage(path: string, bytes: number): Buffer {
  const out = `${path}.raw`;
  execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', path, out]);
  try {
    return readFileSync(out).subarray(0, bytes);
  } finally {
    execFileSync('rm', ['-f', out]);
  }
}

/** `qemu-img compare`: 0 when both images show the guest the same bytes. */
const compareImages = (a: string, b: string) => spawnSync('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', a, b], { encoding: 'utf8' });

function diskWithReplica(path: string, replica: ReplicaTarget): DiskSpec {
  return { path, format: 'qcow2', sizeMiB: SIZE_MIB, replica };
}

describe('disk replicas', () => {
  it('gets in step, and holds every write the guest completed when the primary is killed', T, async () => {
    requireTools();
    const a = join(root.path, 'a1');
    const b = join(root.path, 'b1');
    const driverA = await primary(a);
    const host = replicaHost(b, await primary(join(b, 'driver')));
    const name = 'vms/r1/disk0.qcow2';
    const target = await host.serve(name);
    assert.equal(target.host, '127.0.0.1');
    assert.deepEqual(await host.serve(name), target, 'serving the same volume again gives the same answer');
    assert.equal(daemonsOf(b).length, 1);

    const disk = join(a, 'r1-disk0.qcow2');
    const started = await driverA.start(guestSpec('r1', { disks: [diskWithReplica(disk, target)] }));
    assert.deepEqual(started.replicas?.map((r) => [r.disk, r.target]), [[0, target]]);
    await replicaState(driverA, 'r1', 'synced');

    const expected = await guestWrites(driverA, 'r1', 'awan-replica-01', 2 * MiB, 7);
    const pid = Number(readFileSync(vmPaths(a, 'r1').pidfile, 'utf8'));
    process.kill(pid, 'SIGKILL');
    await until(async () => (await driverA.status('r1')).state === 'crashed', { timeoutMs: 60_000, what: 'the primary gone' });

    // The replica host stops serving (the daemon flushes and closes the image), then the copy is read.
    await host.unserve(name);
    assert.deepEqual(daemonsOf(b), []);
    assert.ok(readImage(host.imagePath(name), 2 * MiB).equals(expected), 'the replica holds the guest\'s write');
    const cmp = compareImages(disk, host.imagePath(name));
    assert.equal(cmp.status, 0, `primary and replica differ: ${cmp.stdout}${cmp.stderr}`);

    await host.unserve(name, true);
    assert.equal(existsSync(host.imagePath(name)), false, 'the replica image is deleted');
  });

  it('degrades when the replica dies while the guest keeps writing, rebuilds on a new one, survives a driver restart', T, async () => {
    requireTools();
    const a = join(root.path, 'a2');
    const b = join(root.path, 'b2');
    const opts = { replicaReconnectDelayS: 2 };
    const driverA = await primary(a, opts);
    const host = replicaHost(b, await primary(join(b, 'driver')));
    const name = 'vms/r2/disk0.qcow2';
    const target = await host.serve(name);
    const disk = join(a, 'r2-disk0.qcow2');
    await driverA.start(guestSpec('r2', { disks: [diskWithReplica(disk, target)] }));
    await replicaState(driverA, 'r2', 'synced');

    assert.equal(killMentioning(b, 'qemu-storage-daemon').length, 1, 'the replica\'s daemon is killed');
    // The guest's next writes complete (on its own disk) and the replica is reported degraded.
    await guestWrites(driverA, 'r2', 'awan-replica-02', MiB, 3);
    const degraded = await replicaState(driverA, 'r2', 'degraded');
    assert.equal(degraded.state, 'running');
    assert.ok(degraded.replicas?.[0]?.reason, 'a degraded replica says why');
    const uptime = lastGuestUptime(await driverA.consoleHistory('r2')) ?? 0;
    await guestWrites(driverA, 'r2', 'awan-replica-03', MiB, 4);
    await until(async () => (lastGuestUptime(await driverA.consoleHistory('r2')) ?? 0) > uptime, { timeoutMs: 60_000, what: 'the guest running on' });

    // Serving the volume again starts a new daemon (the dead one's answer is not reused); the VM rebuilds into it.
    const again = await host.serve(name);
    assert.equal(daemonsOf(b).length, 1);
    const rebuilding = await driverA.attachReplica('r2', 0, again);
    assert.ok(rebuilding.replicas?.[0]?.state !== 'degraded', `attached: ${JSON.stringify(rebuilding.replicas)}`);
    assert.deepEqual((await driverA.attachReplica('r2', 0, again)).replicas?.[0]?.target, again, 'attaching the same target again is a no-op');
    await replicaState(driverA, 'r2', 'synced');

    // A new driver instance finds the VM and its mirror still in step.
    await driverA.close();
    drivers.delete(driverA);
    const driverA2 = await primary(a, opts);
    const found = await driverA2.status('r2');
    assert.equal(found.replicas?.[0]?.state, 'synced');
    assert.deepEqual(found.replicas?.[0]?.target, again);

    const expected = await guestWrites(driverA2, 'r2', 'awan-replica-04', 2 * MiB, 5);
    const detached = await driverA2.detachReplica('r2', 0);
    assert.equal(detached.replicas, undefined);
    await driverA2.stop('r2', { force: true });
    await host.unserve(name);
    assert.ok(readImage(host.imagePath(name), 2 * MiB).equals(expected), 'the rebuilt replica holds the later write');
    const cmp = compareImages(disk, host.imagePath(name));
    assert.equal(cmp.status, 0, `primary and replica differ: ${cmp.stdout}${cmp.stderr}`);
  });

  it('degrades a replica whose daemon hangs (answers nothing) instead of holding the guest\'s writes', T, async () => {
    requireTools();
    const a = join(root.path, 'a4');
    const b = join(root.path, 'b4');
    const driverA = await primary(a, { replicaReconnectDelayS: 2, replicaWatchIntervalMs: 1000 });
    const host = replicaHost(b, await primary(join(b, 'driver')));
    const name = 'vms/r4/disk0.qcow2';
    await driverA.start(guestSpec('r4', { disks: [diskWithReplica(join(a, 'r4-disk0.qcow2'), await host.serve(name))] }));
    await replicaState(driverA, 'r4', 'synced');
    // A stopped daemon is a partitioned peer as the primary sees it: no reset, no close, no answer.
    const [daemon] = daemonsOf(b);
    assert.ok(daemon);
    process.kill(daemon, 'SIGSTOP');
    try {
      await guestWrites(driverA, 'r4', 'awan-replica-05', MiB, 6);
      await replicaState(driverA, 'r4', 'degraded');
    } finally {
      process.kill(daemon, 'SIGCONT');
    }
    assert.equal((await driverA.status('r4')).state, 'running');
  });

  it('cancels the mirror cleanly when the VM stops, and leaves no process behind', T, async () => {
    requireTools();
    const a = join(root.path, 'a3');
    const b = join(root.path, 'b3');
    const driverA = await primary(a);
    const host = replicaHost(b, await primary(join(b, 'driver')));
    const name = 'vms/r3/disk0.qcow2';
    const target = await host.serve(name);
    await driverA.start(guestSpec('r3', { disks: [diskWithReplica(join(a, 'r3-disk0.qcow2'), target)] }));
    await replicaState(driverA, 'r3', 'synced');
    await driverA.stop('r3', { force: true });
    const stopped = await driverA.status('r3');
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.replicas, undefined);
    // The replica host still serves: the primary ended its connection, it did not break the export.
    assert.equal(daemonsOf(b).length, 1);
    assert.deepEqual(await host.serve(name), target);
    await driverA.delete('r3');
    await host.unserve(name, true);
    for (const s of storages) await s.close();
    assert.deepEqual(pidsMentioning(root.path), [], 'no QEMU or qemu-storage-daemon left');
  });

  it('moves live onto its copy: the destination takes the copy over as the disk, with every write the guest completed', T, async () => {
    requireTools();
    const a = join(root.path, 'a5');
    const b = join(root.path, 'b5');
    const driverA = await primary(a, { localPoolDir: join(a, 'pool') });
    const driverB = await primary(join(b, 'driver'), { localPoolDir: localPoolPath(b) });
    const host = replicaHost(b, driverB);
    const name = 'vms/m5/disk0.qcow2';
    const local = { path: name, local: true, format: 'qcow2' as const, sizeMiB: SIZE_MIB };
    const spec = guestSpec('m5', { disks: [{ ...local, replica: await host.serve(name) }] });
    await driverA.start(spec);
    await replicaState(driverA, 'm5', 'synced');
    const before = await guestWrites(driverA, 'm5', 'before-the-move', 2 * MiB, 1);

    // Control's commands, as the agents run them: the destination serves the copy, so it takes it over.
    const target = (await host.run({ op: 'prepareIncoming', spec: { ...spec, disks: [{ ...local, replicaHere: true }] } })) as MigrationTarget;
    assert.equal(target.viaReplica, true, 'the destination says it takes the copy over');
    assert.equal(target.nbd, undefined, 'no disk is sent');
    assert.equal(daemonsOf(b).length, 1, 'the copy is served while the guest moves');
    const result = await driverA.migrate('m5', target);
    assert.ok(result.totalMs > 0);
    const arrived = (await host.run({ op: 'completeIncoming', vmId: 'm5' })) as DriverVmStatus;
    assert.equal(arrived.state, 'running');
    assert.equal(daemonsOf(b).length, 0, 'the copy\'s server let go of it');
    assert.ok(!(await driverA.list()).some((v) => v.id === 'm5'), 'the source forgot the VM');
    assert.ok(!existsSync(join(a, 'pool', name)), 'the source deleted its own disk');
    assert.equal(arrived.replicas, undefined, 'the taken-over disk mirrors nowhere');

    // The guest goes on writing on the copy; both writes are on it once the VM stops.
    const after = await guestWrites(driverB, 'm5', 'after--the-move', 1 * MiB, 2);
    await driverB.stop('m5', { force: false, timeoutMs: 60_000 });
    assert.ok(readImage(host.imagePath(name), MiB).equals(after), 'the write after the move is on the disk');
    assert.ok(readImage(host.imagePath(name), 2 * MiB).subarray(MiB).equals(before.subarray(MiB)), 'the write before the move is on the disk');
    assert.ok(existsSync(host.imagePath(name)), 'the copy is the VM\'s disk now');
  });
});
