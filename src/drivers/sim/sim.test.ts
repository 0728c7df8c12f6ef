// The sim driver against the shared driver contract, plus what only the simulator offers: fault injection and capacity.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { driverContract } from '../../../test/drivers/contract.ts';
import { until } from '../../../test/until.ts';
import { DriverError, type DriverEvent, type DriverVmSpec, type MigrationProgress } from '../types.ts';
import type { SimClock } from './clock.ts';
import { createSimDriver, type SimDriver, type SimDriverOptions } from './index.ts';

function vmSpec(id: string, memoryMiB = 256, maxMemoryMiB = Math.max(512, memoryMiB)): DriverVmSpec {
  return {
    id,
    name: `vm-${id}`,
    cpus: 2,
    memoryMiB,
    maxMemoryMiB,
    boot: { kind: 'kernel', kernelPath: '/boot/vmlinuz', initrdPath: '/boot/initrd', cmdline: 'console=ttyS0' },
    disks: [],
    nics: [{ mode: 'user', mac: '52:54:00:00:00:01' }],
  };
}

function sim(extra: Partial<SimDriverOptions> = {}): SimDriver {
  return createSimDriver({ hostname: 'sim-a', address: '10.0.0.1', memoryMiB: 4096, bootDelayMs: 20, migrateMiBPerS: 2048, ...extra });
}

function isDriverError(code: DriverError['code'], text?: string): (err: unknown) => boolean {
  return (err) => err instanceof DriverError && err.code === code && (text === undefined || err.message.includes(text));
}

/** Runs a test with one or two sim hosts and checks they left no timer behind. */
async function withHosts(body: (a: SimDriver, b: SimDriver) => Promise<void>, extra: Partial<SimDriverOptions> = {}): Promise<void> {
  const a = sim(extra);
  const b = sim({ hostname: 'sim-b', address: '10.0.0.2', ...extra });
  try {
    await body(a, b);
  } finally {
    await a.close();
    await b.close();
  }
  assert.equal(a.pendingTimers + b.pendingTimers, 0);
}

/** A clock that moves only when told, for tests about what happens before a delay is over. */
function manualClock(): SimClock & { advance(ms: number): void; pending(): number } {
  let nowMs = 0;
  let timers: { at: number; fn: () => void }[] = [];
  return {
    now: () => nowMs,
    schedule(ms, fn) {
      const timer = { at: nowMs + ms, fn };
      timers.push(timer);
      return () => {
        timers = timers.filter((t) => t !== timer);
      };
    },
    advance(ms) {
      nowMs += ms;
      for (;;) {
        const due = timers.filter((t) => t.at <= nowMs).sort((x, y) => x.at - y.at)[0];
        if (!due) return;
        timers = timers.filter((t) => t !== due);
        due.fn();
      }
    },
    pending: () => timers.length,
  };
}

driverContract(
  'sim',
  async () => {
    const driver = sim();
    // Same address as the driver, like the QEMU contract's two drivers on 127.0.0.1: hosts share machines.
    const peer = sim({ hostname: 'sim-b', address: '10.0.0.1' });
    return {
      driver,
      peer,
      spec: (id) => vmSpec(id),
      cleanup: async () => {
        await driver.close();
        await peer.close();
      },
    };
  },
  { timeoutMs: 10_000, closeReleasesEverything: true },
);

describe('sim driver', () => {
  it('reports its capacity, and VMs and incoming migrations take memory from it', () =>
    withHosts(async (a, b) => {
      const facts = await a.facts();
      assert.deepEqual(
        { ...facts },
        {
          hostname: 'sim-a', cpus: 8, memoryMiB: 4096, memoryFreeMiB: 4096, driver: 'sim', address: '10.0.0.1',
          capabilities: ['balloon', 'virtio-mem', 'live-migration', 'console'], accelerator: 'sim',
        },
      );
      await a.start(vmSpec('v1', 1024));
      assert.equal((await a.facts()).memoryFreeMiB, 3072);
      await a.setMemory('v1', 512);
      assert.equal((await a.facts()).memoryFreeMiB, 3584);
      await b.prepareIncoming(vmSpec('v2', 1024));
      assert.equal((await b.facts()).memoryFreeMiB, 3072);
      await a.stop('v1');
      assert.equal((await a.facts()).memoryFreeMiB, 4096);
    }));

  it('refuses to start a VM that does not fit in free memory', () =>
    withHosts(async (a) => {
      await a.start(vmSpec('big', 3072, 3072));
      await assert.rejects(a.start(vmSpec('more', 2048, 2048)), isDriverError('INSUFFICIENT_MEMORY'));
      await assert.rejects(a.status('more'), isDriverError('VM_NOT_FOUND'));
      assert.equal((await a.facts()).memoryFreeMiB, 1024);
      await assert.rejects(a.prepareIncoming(vmSpec('incoming', 2048, 2048)), isDriverError('INSUFFICIENT_MEMORY'));
    }));

  it('refuses to grow a VM past free host memory or its maxMemoryMiB', () =>
    withHosts(async (a) => {
      await a.start(vmSpec('v1', 1024, 8192));
      await a.start(vmSpec('v2', 2048, 2048));
      await assert.rejects(a.setMemory('v1', 3000), isDriverError('INSUFFICIENT_MEMORY'));
      await assert.rejects(a.setMemory('v2', 2049), isDriverError('UNSUPPORTED'));
      assert.equal((await a.setMemory('v1', 2048)).memoryActualMiB, 2048);
    }));

  it('keeps the balloon above what the guest uses plus the margin', () =>
    withHosts(
      async (a) => {
        const status = await a.start(vmSpec('v1', 512));
        assert.equal(status.memoryUsedMiB, 200);
        await assert.rejects(a.setMemory('v1', 263), isDriverError('INSUFFICIENT_MEMORY'));
        assert.equal((await a.setMemory('v1', 264)).memoryActualMiB, 264);
      },
      { guestUsedMiB: () => 200, balloonMarginMiB: 64 },
    ));

  it('shows starting until the boot delay is over, and one boot serves concurrent starts', async () => {
    const clock = manualClock();
    const a = sim({ clock, bootDelayMs: 1000 });
    const states: string[] = [];
    a.subscribe((e) => e.type === 'vm-state' && states.push(e.vm.state));
    const first = a.start(vmSpec('v1'));
    const second = a.start(vmSpec('v1'));
    assert.equal((await a.status('v1')).state, 'starting');
    clock.advance(999);
    assert.equal((await a.status('v1')).state, 'starting');
    clock.advance(1);
    const [s1, s2] = await Promise.all([first, second]);
    assert.equal(s1.state, 'running');
    assert.equal(s2.state, 'running');
    assert.deepEqual(states, ['starting', 'running']);
    clock.advance(5000);
    assert.equal((await a.status('v1')).uptimeS, 5);
    await a.close();
    assert.equal(clock.pending(), 0);
  });

  it('failNextStart fails one boot with its reason, then starts work again', () =>
    withHosts(async (a) => {
      const events: DriverEvent[] = [];
      a.subscribe((e) => events.push(e));
      a.failNextStart('disk unreadable');
      await assert.rejects(a.start(vmSpec('v1')), isDriverError('BOOT_FAILED', 'disk unreadable'));
      const failed = await a.status('v1');
      assert.equal(failed.state, 'stopped');
      assert.equal(failed.reason, 'disk unreadable');
      assert.equal((await a.facts()).memoryFreeMiB, 4096);
      assert.ok(events.some((e) => e.type === 'vm-state' && e.vm.state === 'stopped' && e.vm.reason === 'disk unreadable'));
      assert.equal((await a.start(vmSpec('v1'))).state, 'running');
    }));

  it('failBoot decides per spec which boots fail', () =>
    withHosts(
      async (a) => {
        await assert.rejects(a.start(vmSpec('bad-1')), isDriverError('BOOT_FAILED', 'no bootable disk'));
        assert.equal((await a.start(vmSpec('good-1'))).state, 'running');
      },
      { failBoot: (spec) => (spec.id.startsWith('bad') ? 'no bootable disk' : undefined) },
    ));

  it('crash emits a crashed event, frees the memory and lets the VM start again', () =>
    withHosts(async (a) => {
      await a.start(vmSpec('v1', 1024));
      const events: DriverEvent[] = [];
      a.subscribe((e) => events.push(e));
      a.crash('v1', 'kernel BUG at mm/slub.c');
      const crashed = events.find((e) => e.type === 'vm-state' && e.vm.state === 'crashed');
      assert.ok(crashed && crashed.type === 'vm-state');
      assert.equal(crashed.vm.reason, 'kernel BUG at mm/slub.c');
      assert.equal((await a.status('v1')).state, 'crashed');
      assert.equal((await a.facts()).memoryFreeMiB, 4096);
      assert.match(await a.consoleHistory('v1'), /Kernel panic - not syncing: kernel BUG at mm\/slub.c/);
      assert.equal((await a.start(vmSpec('v1', 1024))).state, 'running');
      assert.throws(() => a.crash('nope'), isDriverError('VM_NOT_FOUND'));
    }));

  it('a crash during migration fails the migration', () =>
    withHosts(
      async (a, b) => {
        await a.start(vmSpec('v1'));
        const migration = a.migrate('v1', await b.prepareIncoming(vmSpec('v1')));
        a.crash('v1');
        await assert.rejects(migration, isDriverError('MIGRATION_FAILED'));
        assert.equal((await a.status('v1')).state, 'crashed');
      },
      { migrateMiBPerS: 64 },
    ));

  it('stopping or aborting a booting VM fails its start and leaves it stopped', () =>
    withHosts(
      async (a) => {
        const start = a.start(vmSpec('v1'));
        await a.stop('v1');
        await assert.rejects(start, isDriverError('BOOT_FAILED'));
        assert.equal((await a.status('v1')).state, 'stopped');

        const abort = new AbortController();
        const aborted = a.start(vmSpec('v2'), abort.signal);
        abort.abort();
        await assert.rejects(aborted, isDriverError('BOOT_FAILED', 'cancelled'));
        assert.equal((await a.status('v2')).state, 'stopped');
        assert.equal(a.pendingTimers, 0);
      },
      { bootDelayMs: 60_000 },
    ));

  it('delete and close cancel boots and leave no timer', async () => {
    const a = sim({ bootDelayMs: 60_000 });
    const deleted = a.start(vmSpec('v1'));
    await a.delete('v1');
    await assert.rejects(deleted, isDriverError('BOOT_FAILED'));
    const closed = a.start(vmSpec('v2'));
    await a.close();
    await assert.rejects(closed, isDriverError('BOOT_FAILED'));
    assert.equal(a.pendingTimers, 0);
    await assert.rejects(a.list(), isDriverError('INTERNAL'));
  });

  it('migrates with rising progress to a sim:// uri, and an abort mid-way keeps the VM at home', () =>
    withHosts(
      async (a, b) => {
        await a.start(vmSpec('v1'));
        const target = await b.prepareIncoming(vmSpec('v1'));
        assert.match(target.uri, /^sim:\/\/10\.0\.0\.2\/[^/]+\/v1$/);
        const own = await a.prepareIncoming(vmSpec('v9'));
        await assert.rejects(a.migrate('v1', { uri: own.uri.replace(/v9$/, 'v1') }), isDriverError('MIGRATION_FAILED', 'this host'));
        await a.abortIncoming('v9');
        await assert.rejects(a.migrate('v1', { uri: 'tcp:10.0.0.2:4444' }), isDriverError('MIGRATION_FAILED'));

        const abort = new AbortController();
        const seen: MigrationProgress[] = [];
        const aborted = a.migrate('v1', target, (p) => {
          seen.push(p);
          abort.abort();
        }, abort.signal);
        await assert.rejects(aborted, isDriverError('MIGRATION_FAILED', 'cancelled'));
        assert.equal(seen.length, 1);
        assert.ok(seen[0].fraction < 1);
        assert.equal((await a.status('v1')).state, 'running');
        assert.equal(a.pendingTimers, 0);

        const progress: MigrationProgress[] = [];
        await a.migrate('v1', target, (p) => progress.push(p));
        assert.ok(progress.length > 1);
        assert.deepEqual(progress.at(-1), { fraction: 1, transferredMiB: 256, remainingMiB: 0 });
        await assert.rejects(a.status('v1'), isDriverError('VM_NOT_FOUND'));
        assert.equal((await a.facts()).memoryFreeMiB, 4096);
        assert.equal((await b.completeIncoming('v1')).state, 'running');
      },
      { migrateMiBPerS: 512 },
    ));

  it('migrates back and forth between two hosts that share one address', async () => {
    // The demo and a lab box run several agents on one machine: the address alone cannot tell them apart.
    const a = sim({ hostname: 'sim-a', address: '127.0.0.1' });
    const b = sim({ hostname: 'sim-b', address: '127.0.0.1' });
    try {
      await a.start(vmSpec('v1'));
      await a.migrate('v1', await b.prepareIncoming(vmSpec('v1')));
      assert.equal((await b.completeIncoming('v1')).state, 'running');
      await assert.rejects(a.status('v1'), isDriverError('VM_NOT_FOUND'));

      await b.migrate('v1', await a.prepareIncoming(vmSpec('v1')));
      assert.equal((await a.completeIncoming('v1')).state, 'running');
      await assert.rejects(b.status('v1'), isDriverError('VM_NOT_FOUND'));
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses a second migration of the same VM while one runs', () =>
    withHosts(
      async (a, b) => {
        await a.start(vmSpec('v1'));
        const target = await b.prepareIncoming(vmSpec('v1'));
        const first = a.migrate('v1', target);
        await assert.rejects(a.migrate('v1', target), isDriverError('MIGRATION_FAILED', 'already migrating'));
        await first;
      },
      { migrateMiBPerS: 512 },
    ));

  it('prints a boot log, echoes console input and streams both as events', () =>
    withHosts(async (a) => {
      const chunks: string[] = [];
      a.subscribe((e) => e.type === 'console' && e.vmId === 'v1' && chunks.push(e.data));
      await a.start(vmSpec('v1'));
      const history = await a.consoleHistory('v1');
      assert.match(history, /Linux version/);
      assert.match(history, /vm-v1 login: $/);
      await a.consoleWrite('v1', 'root\n');
      assert.match(await a.consoleHistory('v1'), /login: root\r\n# $/);
      assert.equal(chunks.join(''), await a.consoleHistory('v1'));
      await a.stop('v1', { force: true });
      await assert.rejects(a.consoleWrite('v1', 'x'), isDriverError('VM_NOT_RUNNING'));
    }));

  it('stops delivering events after unsubscribe, and a throwing listener harms no one', () =>
    withHosts(async (a) => {
      let gone = 0;
      let kept = 0;
      a.subscribe(() => {
        throw new Error('broken listener');
      });
      const unsubscribe = a.subscribe(() => gone++);
      a.subscribe(() => kept++);
      unsubscribe();
      await a.start(vmSpec('v1'));
      await until(() => kept > 0);
      assert.equal(gone, 0);
    }));
});

describe('sim driver: remote memory', () => {
  it('attaches at once as active swap, is idempotent, and detaches (also of a VM that is gone)', () =>
    withHosts(async (a) => {
      await a.start(vmSpec('r1'));
      const target = { host: '10.0.0.2', port: 30000, exportName: 'rmem-loan' };
      const attached = await a.attachRemoteMemory('r1', 3, target, 512);
      assert.deepEqual(attached.remoteMemory, [{ slot: 3, target, sizeMiB: 512, state: 'active' }]);
      assert.equal(attached.swapTotalMiB, 512);
      assert.deepEqual((await a.attachRemoteMemory('r1', 3, target, 512)).remoteMemory, attached.remoteMemory);
      await assert.rejects(a.attachRemoteMemory('r1', 8, target, 512), isDriverError('REMOTE_MEMORY_FAILED'));
      assert.equal((await a.detachRemoteMemory('r1', 3))?.remoteMemory, undefined);
      assert.equal((await a.detachRemoteMemory('r1', 3))?.remoteMemory, undefined);
      assert.equal(await a.detachRemoteMemory('gone', 0), undefined);
      await a.attachRemoteMemory('r1', 0, target, 256);
      await a.stop('r1', { force: true });
      await a.start(vmSpec('r1'));
      assert.equal((await a.status('r1')).remoteMemory, undefined, 'a new boot has nothing plugged');
    }));
});
