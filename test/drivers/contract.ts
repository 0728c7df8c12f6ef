// The behaviour every HypervisorDriver must show, as a node:test suite any driver's test file can register.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it, type TestContext } from 'node:test';
import {
  DriverError,
  type DriverEvent,
  type DriverVmSpec,
  type DriverVmState,
  type HypervisorDriver,
  type MigrationProgress,
} from '../../src/drivers/types.ts';
import { until } from '../until.ts';

export interface ContractSetup {
  driver: HypervisorDriver;
  /** A second host to migrate to; the migration tests skip without one. */
  peer?: HypervisorDriver;
  /** A small bootable VM with this id; give it maxMemoryMiB above memoryMiB to cover memory hot-plug. */
  spec: (id: string) => DriverVmSpec;
  /** Closes the drivers and removes whatever setup created. */
  cleanup: () => Promise<void>;
}

export interface ContractOptions {
  /** Per test, and for each wait inside one; real guests take seconds to boot and migrate. */
  timeoutMs?: number;
  /** How far memoryActualMiB may sit from a setMemory target (balloons settle on page boundaries). */
  memoryToleranceMiB?: number;
  /** Check that close() leaves no timer or handle behind; only for drivers whose VMs live in-process. */
  closeReleasesEverything?: boolean;
}

type Setup = () => Promise<ContractSetup>;

/** Which assert.rejects accepts: a DriverError with this code (checked by shape, so a second copy of types.ts still counts). */
function driverError(code?: DriverError['code']): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof Error, `expected a DriverError, got ${String(err)}`);
    assert.equal(err.name, 'DriverError', `expected a DriverError, got ${err.name}: ${err.message}`);
    if (code) assert.equal((err as DriverError).code, code, err.message);
    return true;
  };
}

async function listed(driver: HypervisorDriver, id: string): Promise<boolean> {
  return (await driver.list()).some((vm) => vm.id === id);
}

export function driverContract(name: string, setup: Setup, opts: ContractOptions = {}): void {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const toleranceMiB = opts.memoryToleranceMiB ?? 0;

  async function stateOf(driver: HypervisorDriver, id: string, state: DriverVmState): Promise<void> {
    await until(async () => (await driver.status(id)).state === state, { timeoutMs, what: `${id} to be ${state}` });
  }

  async function memoryOf(driver: HypervisorDriver, id: string, targetMiB: number): Promise<void> {
    await until(async () => Math.abs((await driver.status(id)).memoryActualMiB - targetMiB) <= toleranceMiB, {
      timeoutMs,
      what: `${id} to have ${targetMiB} MiB`,
    });
  }

  /** Runs a test with a fresh setup and a unique VM id, and removes the VM from both hosts whatever happens. */
  function test(title: string, body: (ctx: ContractSetup, id: string, t: TestContext) => Promise<void>): void {
    it(title, { timeout: timeoutMs }, async (t) => {
      const ctx = await setup();
      const id = `contract-${randomUUID().slice(0, 8)}`;
      try {
        await body(ctx, id, t);
      } finally {
        await ctx.driver.delete(id).catch(() => undefined);
        await ctx.peer?.abortIncoming(id).catch(() => undefined);
        await ctx.peer?.delete(id).catch(() => undefined);
        await ctx.cleanup();
      }
    });
  }

  describe(`${name} driver contract`, () => {
    test('start runs the VM with the cpus and memory of its spec', async ({ driver, spec }, id) => {
      const s = spec(id);
      const started = await driver.start(s);
      assert.equal(started.id, id);
      assert.equal(started.state, 'running');
      assert.equal(started.cpus, s.cpus);
      assert.equal(started.memoryMiB, s.memoryMiB);
      assert.ok(Math.abs(started.memoryActualMiB - s.memoryMiB) <= toleranceMiB, `actual ${started.memoryActualMiB} MiB`);
      const status = await driver.status(id);
      assert.equal(status.state, 'running');
      assert.equal(status.name, s.name);
    });

    test('starting a running VM is a no-op', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      const again = await driver.start(spec(id));
      assert.equal(again.state, 'running');
      assert.equal((await driver.list()).filter((vm) => vm.id === id).length, 1);
    });

    test('list shows the VM', async ({ driver, spec }, id) => {
      assert.equal(await listed(driver, id), false);
      await driver.start(spec(id));
      const vm = (await driver.list()).find((v) => v.id === id);
      assert.ok(vm, `${id} not in list`);
      assert.equal(vm.state, 'running');
      assert.equal(vm.cpus, spec(id).cpus);
    });

    test('status of an unknown VM is VM_NOT_FOUND', async ({ driver }, id) => {
      await assert.rejects(driver.status(id), driverError('VM_NOT_FOUND'));
    });

    test('graceful stop stops the VM, and stopping again is a no-op', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      await driver.stop(id, { timeoutMs: Math.min(10_000, timeoutMs / 4) });
      await stateOf(driver, id, 'stopped');
      await driver.stop(id);
      assert.equal((await driver.status(id)).state, 'stopped');
    });

    test('forced stop stops the VM, and stopping again is a no-op', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      await driver.stop(id, { force: true });
      await stateOf(driver, id, 'stopped');
      await driver.stop(id, { force: true });
      assert.equal((await driver.status(id)).state, 'stopped');
    });

    test('a disk is grown only while its VM is not running, and only if it exists', async ({ driver, spec }, id) => {
      await assert.rejects(driver.growDisk(id, 0, 1024), driverError('VM_NOT_FOUND'));
      await driver.start(spec(id));
      await assert.rejects(driver.growDisk(id, 0, 1024), driverError('VM_EXISTS'));
      await driver.stop(id, { force: true });
      await stateOf(driver, id, 'stopped');
      await assert.rejects(driver.growDisk(id, spec(id).disks.length, 1024), driverError('IMAGE_INVALID'));
    });

    test('a stopped VM starts again', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      await driver.stop(id, { force: true });
      await stateOf(driver, id, 'stopped');
      assert.equal((await driver.start(spec(id))).state, 'running');
    });

    test('reboot keeps the VM running; a stopped VM cannot reboot', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      await driver.reboot(id);
      await stateOf(driver, id, 'running');
      await driver.stop(id, { force: true });
      await stateOf(driver, id, 'stopped');
      await assert.rejects(driver.reboot(id), driverError('VM_NOT_RUNNING'));
    });

    test('setMemory shrinks and grows the guest, and refuses what it cannot give', async ({ driver, spec }, id) => {
      const s = spec(id);
      await driver.start(s);
      const downMiB = Math.floor((s.memoryMiB * 0.75) / 8) * 8;
      await driver.setMemory(id, downMiB);
      await memoryOf(driver, id, downMiB);
      await driver.setMemory(id, s.memoryMiB);
      await memoryOf(driver, id, s.memoryMiB);
      if (s.maxMemoryMiB > s.memoryMiB) {
        const upMiB = Math.floor(Math.min(s.maxMemoryMiB, s.memoryMiB + 128) / 8) * 8;
        await driver.setMemory(id, upMiB);
        await memoryOf(driver, id, upMiB);
      }
      const before = (await driver.status(id)).memoryActualMiB;
      // Far below what any guest uses: a real guest would panic, so the driver must refuse.
      await assert.rejects(driver.setMemory(id, 8), driverError('INSUFFICIENT_MEMORY'));
      await assert.rejects(driver.setMemory(id, s.maxMemoryMiB + 1024), driverError());
      const after = await driver.status(id);
      assert.equal(after.state, 'running');
      assert.ok(Math.abs(after.memoryActualMiB - before) <= toleranceMiB, `memory moved to ${after.memoryActualMiB} MiB`);
    });

    test('delete removes the VM', async ({ driver, spec }, id) => {
      await driver.start(spec(id));
      await driver.delete(id);
      assert.equal(await listed(driver, id), false);
      await assert.rejects(driver.status(id), driverError('VM_NOT_FOUND'));
    });

    test('subscribers see vm-state events', async ({ driver, spec }, id) => {
      const events: DriverEvent[] = [];
      const unsubscribe = driver.subscribe((e) => events.push(e));
      try {
        const saw = (state: DriverVmState) => events.some((e) => e.type === 'vm-state' && e.vm.id === id && e.vm.state === state);
        await driver.start(spec(id));
        await until(() => saw('running'), { timeoutMs, what: 'a running event' });
        await driver.stop(id, { force: true });
        await until(() => saw('stopped'), { timeoutMs, what: 'a stopped event' });
      } finally {
        unsubscribe();
      }
    });

    test('live migration moves the VM to the peer', async ({ driver, peer, spec }, id, t) => {
      if (!peer) return t.skip('no peer driver');
      const s = spec(id);
      await driver.start(s);
      const target = await peer.prepareIncoming(s);
      assert.equal(typeof target.uri, 'string');
      assert.equal((await peer.status(id)).state, 'incoming');
      const progress: MigrationProgress[] = [];
      const result = await driver.migrate(id, target, (p) => progress.push(p));
      assert.ok(progress.length >= 1, 'no progress was reported');
      for (const [i, p] of progress.entries()) {
        assert.ok(p.fraction >= 0 && p.fraction <= 1, `fraction ${p.fraction}`);
        if (i > 0) assert.ok(p.fraction >= progress[i - 1].fraction, 'progress went backwards');
      }
      assert.ok(result.totalMs >= 0 && result.downtimeMs >= 0 && result.downtimeMs <= result.totalMs, JSON.stringify(result));
      const arrived = await peer.completeIncoming(id, timeoutMs);
      assert.equal(arrived.state, 'running');
      assert.equal(arrived.cpus, s.cpus);
      assert.equal(arrived.memoryMiB, s.memoryMiB);
      assert.equal((await peer.status(id)).state, 'running');
      await until(async () => !(await listed(driver, id)), { timeoutMs, what: `${id} to leave the source` });
    });

    test('an aborted migration leaves the VM running on the source', async ({ driver, peer, spec }, id, t) => {
      if (!peer) return t.skip('no peer driver');
      const s = spec(id);
      await driver.start(s);
      const target = await peer.prepareIncoming(s);
      const abort = new AbortController();
      const migration = driver.migrate(id, target, undefined, abort.signal);
      abort.abort();
      await assert.rejects(migration);
      await stateOf(driver, id, 'running');
      await peer.abortIncoming(id);
      assert.equal(await listed(peer, id), false);

      // Nothing of the cancelled attempt may stand in the way of the next one.
      const retry = await peer.prepareIncoming(s);
      await driver.migrate(id, retry);
      assert.equal((await peer.completeIncoming(id, timeoutMs)).state, 'running');
    });

    if (opts.closeReleasesEverything) {
      it('close() leaves no timer or handle behind', { timeout: timeoutMs }, async () => {
        const count = (): number => process.getActiveResourcesInfo().length;
        const before = count();
        const ctx = await setup();
        const id = `contract-${randomUUID().slice(0, 8)}`;
        await ctx.driver.start(ctx.spec(id));
        let migration: Promise<unknown> = Promise.resolve();
        if (ctx.peer) {
          migration = ctx.driver.migrate(id, await ctx.peer.prepareIncoming(ctx.spec(id))).catch(() => undefined);
        }
        await ctx.driver.close();
        await ctx.peer?.close();
        // Counted before the migration settles: a driver that kept its timers would otherwise drain them meanwhile.
        const after = count();
        const leftover = process.getActiveResourcesInfo().join(', ');
        await migration;
        await ctx.cleanup();
        assert.ok(after <= before, `${after - before} more resources after close: ${leftover}`);
      });
    }
  });
}
