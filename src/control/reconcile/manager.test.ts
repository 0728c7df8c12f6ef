// The controller manager: registering, routing changes to the controllers that watch them, resync, start and
// stop (also racing each other), per-controller metrics, and backoff of a failing controller.
import assert from 'node:assert/strict';
import { afterEach, describe, it, mock } from 'node:test';
import { until } from '../../../test/until.ts';
import { createLogger } from '../../lib/logger.ts';
import { createMetrics } from '../metrics.ts';
import { createLocalChangeFeed } from './changes.ts';
import { type Controller, createControllerManager } from './manager.ts';

const log = createLogger('manager-test', 'silent');

function setup() {
  const metrics = createMetrics();
  const changes = createLocalChangeFeed();
  const manager = createControllerManager({ log, metrics, changes });
  return { metrics, changes, manager };
}

/** A controller that records the keys it reconciles; `listKeys` returns `keys`. */
function recorder(name: string, over: Partial<Controller> & { keys?: string[] } = {}) {
  const seen: string[] = [];
  const c: Controller = {
    name,
    watches: ['vm'],
    listKeys: async () => over.keys ?? [],
    reconcile: async (key) => {
      seen.push(key);
    },
    ...over,
  };
  return { c, seen };
}

function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { opened, open };
}

const flush = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('controller manager', () => {
  const managers: ReturnType<typeof setup>['manager'][] = [];
  afterEach(async () => {
    for (const m of managers.splice(0)) await m.stop();
  });
  const make = () => {
    const s = setup();
    managers.push(s.manager);
    return s;
  };

  it('registers controllers by name, refuses a second of one name and knows no other', () => {
    const { manager } = make();
    const handle = manager.register(recorder('vms').c);
    manager.register(recorder('hosts', { watches: ['host'] }).c);
    assert.equal(handle.name, 'vms');
    assert.deepEqual(manager.names(), ['vms', 'hosts']);
    assert.equal(manager.get('hosts').name, 'hosts');
    assert.throws(() => manager.register(recorder('vms').c), /controller vms is registered twice/);
    assert.throws(() => manager.get('power'), /no controller named power/);
    assert.throws(() => handle.queue, /controller vms is not running/);
    assert.equal(manager.running, false);
  });

  it('routes a change only to the controllers watching its kind, with the keys keysFor gives', async () => {
    const { manager, changes } = make();
    const vms = recorder('vms');
    const hosts = recorder('hosts', { watches: ['host'] });
    const placement = recorder('placement', { watches: ['vm', 'host'], keysFor: async (ch) => [`${ch.kind}:${ch.id}`] });
    for (const r of [vms, hosts, placement]) manager.register(r.c);
    await manager.start();
    changes.publish({ kind: 'vm', id: 'v1' });
    changes.publish({ kind: 'host', id: 'h1' });
    changes.publish({ kind: 'volume', id: 'x1' });
    await until(() => vms.seen.length >= 1 && hosts.seen.length >= 1 && placement.seen.length >= 2);
    await manager.idle();
    assert.deepEqual(vms.seen, ['v1']);
    assert.deepEqual(hosts.seen, ['h1']);
    assert.deepEqual(placement.seen.sort(), ['host:h1', 'vm:v1']);
  });

  it('queues every key at start and again at each resync', async () => {
    const { manager } = make();
    let lists = 0;
    const r = recorder('vms', {
      resyncMs: 10,
      listKeys: async () => {
        lists++;
        return ['a', 'b'];
      },
    });
    manager.register(r.c);
    await manager.start();
    assert.equal(lists, 1, 'listed once by start');
    await until(() => r.seen.filter((k) => k === 'a').length >= 1 && r.seen.includes('b'));
    // The periodic resync queues the same keys again.
    await until(() => lists >= 3 && r.seen.filter((k) => k === 'a').length >= 2);
    assert.ok(r.seen.every((k) => k === 'a' || k === 'b'));
  });

  it("runs a controller's start() before its first pass, and the change announced meanwhile is reconciled after", async () => {
    const { manager, changes } = make();
    const g = gate();
    let started = false;
    const passesBeforeStart: string[] = [];
    const r = recorder('vms', {
      keys: ['v1'],
      start: async () => {
        await g.opened;
        started = true;
      },
      reconcile: async (key) => {
        if (!started) passesBeforeStart.push(key);
        r.seen.push(key);
      },
    });
    manager.register(r.c);
    const starting = manager.start();
    await flush();
    changes.publish({ kind: 'vm', id: 'v1' });
    manager.get('vms').enqueue('v1');
    await flush();
    g.open();
    await starting;
    await until(() => r.seen.length >= 1);
    await manager.idle();
    assert.deepEqual(passesBeforeStart, []);
    assert.deepEqual(r.seen, ['v1']);
  });

  it('stops passes: after stop nothing new runs, the pass already running finishes, and stop() of each controller is called', async () => {
    const { manager, changes, metrics } = make();
    const g = gate();
    let stops = 0;
    const r = recorder('vms', {
      reconcile: async (key) => {
        r.seen.push(key);
        if (key === 'slow') await g.opened;
      },
      stop: () => {
        stops++;
      },
    });
    manager.register(r.c);
    await manager.start();
    assert.match(await metrics.registry.metrics(), /^awan_controllers_running 1$/m);
    manager.get('vms').enqueue('slow');
    await until(() => r.seen.includes('slow'));
    await manager.stop();
    assert.equal(manager.running, false);
    assert.equal(stops, 1);
    changes.publish({ kind: 'vm', id: 'after-change' });
    manager.get('vms').enqueue('after-enqueue');
    manager.get('vms').enqueueAfter('after-delay', 1);
    let idle = false;
    const idling = manager.idle().then(() => (idle = true));
    await flush();
    assert.equal(idle, false, 'the running pass is still going');
    g.open();
    await idling;
    assert.deepEqual(r.seen, ['slow']);
    assert.match(await metrics.registry.metrics(), /^awan_controllers_running 0$/m);
    await manager.stop();
    assert.equal(stops, 1, 'a second stop is a no-op');
  });

  it('on a start after a stop, lets the pass still running from before finish before the key runs again', async () => {
    const { manager } = make();
    const g = gate();
    let active = 0;
    let most = 0;
    const r = recorder('vms', {
      keys: ['k'],
      reconcile: async (key) => {
        active++;
        most = Math.max(most, active);
        r.seen.push(key);
        if (r.seen.length === 1) await g.opened;
        active--;
      },
    });
    manager.register(r.c);
    await manager.start();
    await until(() => r.seen.length === 1);
    await manager.stop();
    let restarted = false;
    const restarting = manager.start().then(() => (restarted = true));
    await flush();
    assert.equal(restarted, false, 'start waits for the pass of the previous run');
    g.open();
    await restarting;
    await until(() => r.seen.length >= 2);
    await manager.idle();
    assert.equal(most, 1);
  });

  it('a stop while controllers are starting wins: nothing runs and the started controller is stopped', async () => {
    const { manager, changes } = make();
    const g = gate();
    let lists = 0;
    let stops = 0;
    const r = recorder('vms', {
      resyncMs: 1,
      start: () => g.opened,
      stop: () => {
        stops++;
      },
      listKeys: async () => {
        lists++;
        return ['v1'];
      },
    });
    manager.register(r.c);
    const starting = manager.start();
    await flush();
    await manager.stop();
    g.open();
    await starting;
    changes.publish({ kind: 'vm', id: 'v2' });
    await flush(20);
    assert.equal(lists, 0);
    assert.deepEqual(r.seen, []);
    assert.equal(stops, 1);
    assert.equal(manager.running, false);
  });

  it('when one controller cannot start, stops those that did and throws', async () => {
    const { manager } = make();
    let stops = 0;
    manager.register(recorder('first', { stop: () => void stops++ }).c);
    manager.register(recorder('second', { start: async () => { throw new Error('cache will not load'); } }).c);
    await assert.rejects(manager.start(), /cache will not load/);
    assert.equal(manager.running, false);
    assert.equal(stops, 1);
  });

  it('reports queue depth, pass durations and passes per controller', async () => {
    const { manager, metrics } = make();
    const g = gate();
    const r = recorder('vms', {
      concurrency: 1,
      reconcile: async (key) => {
        r.seen.push(key);
        if (key === 'first') await g.opened;
      },
    });
    manager.register(r.c);
    manager.register(recorder('hosts', { watches: ['host'] }).c);
    await manager.start();
    const vms = manager.get('vms');
    vms.enqueue('first');
    await until(() => r.seen.includes('first'));
    for (const k of ['a', 'b', 'c']) vms.enqueue(k);
    let text = await metrics.registry.metrics();
    assert.match(text, /^awan_reconcile_queue_depth\{controller="vms"\} 3$/m);
    assert.match(text, /^awan_reconcile_queue_depth\{controller="hosts"\} 0$/m);
    g.open();
    await until(() => r.seen.length === 4);
    await manager.idle();
    text = await metrics.registry.metrics();
    assert.match(text, /^awan_reconcile_queue_depth\{controller="vms"\} 0$/m);
    assert.match(text, /^awan_reconcile_pass_seconds_count\{controller="vms"\} 4$/m);
    assert.match(text, /^awan_reconcile_pass_seconds_bucket\{le="\+Inf",controller="vms"\} 4$/m);
    assert.match(text, /^awan_reconcile_passes_total\{controller="vms"\} 4$/m);
  });

  describe('a controller that fails', () => {
    afterEach(() => mock.timers.reset());

    it('backs off exponentially, counts its errors, and starts over after a success', async () => {
      mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
      const { manager, metrics } = make();
      let fail = true;
      const r = recorder('flaky', {
        reconcile: async (key) => {
          r.seen.push(key);
          if (fail) throw new Error('host says no');
        },
      });
      manager.register(r.c);
      await manager.start();
      const errors = async () => Number(/^awan_reconcile_errors_total\{controller="flaky"\} (\d+)$/m.exec(await metrics.registry.metrics())?.[1] ?? 0);
      const tick = async (ms: number) => {
        mock.timers.tick(ms);
        await flush();
      };
      manager.get('flaky').enqueue('k');
      await flush();
      assert.equal(r.seen.length, 1);
      // Retries after 100 ms, then 200, then 400 (in the queue's time, not the wall clock's).
      for (const [wait, attempts] of [[100, 2], [200, 3], [400, 4]] as const) {
        await tick(wait - 1);
        assert.equal(r.seen.length, attempts - 1, `no retry before ${wait} ms`);
        await tick(1);
        assert.equal(r.seen.length, attempts, `a retry at ${wait} ms`);
      }
      assert.equal(await errors(), 4);
      // The next one (at 800 ms) succeeds; no more retries follow.
      fail = false;
      await tick(800);
      assert.equal(r.seen.length, 5);
      await tick(10_000);
      assert.equal(r.seen.length, 5);
      assert.equal(await errors(), 4);
      // A new failure starts from the shortest delay again.
      fail = true;
      manager.get('flaky').enqueue('k');
      await flush();
      assert.equal(r.seen.length, 6);
      await tick(100);
      assert.equal(r.seen.length, 7);
      await manager.stop();
    });
  });
});
