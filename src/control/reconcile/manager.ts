// The controller manager: every reconciler registers here with a name, the kinds of object it watches and
// a resync period; the manager owns their queues, starts and stops them together (when this process leads)
// and measures them (queue depth, pass duration, errors) under one set of metric names.
import { Counter, Gauge, Histogram } from 'prom-client';
import type { Logger } from '../../lib/logger.ts';
import type { Metrics } from '../metrics.ts';
import type { Change, ChangeFeed } from './changes.ts';
import { type ReconcileResult, WorkQueue } from './queue.ts';

export interface Controller {
  name: string;
  /** Kinds of change (see ChangeFeed) that queue a key here. */
  watches: string[];
  /** Keys a change of a watched kind queues; the changed object's own id by default. */
  keysFor?: (change: Change) => string[] | Promise<string[]>;
  reconcile(key: string): Promise<ReconcileResult>;
  /** Every key there is: queued when the controller starts and at each resync. */
  listKeys(): Promise<string[]>;
  resyncMs?: number;
  concurrency?: number;
  /** Runs before the first pass once this process leads (load caches, take up unfinished work). */
  start?(): Promise<void>;
  stop?(): void | Promise<void>;
}

export interface RunningController {
  readonly name: string;
  readonly queue: WorkQueue;
  enqueue(key: string): void;
  enqueueAfter(key: string, delayMs: number): void;
}

export type ControllerManager = ReturnType<typeof createControllerManager>;

export function createControllerManager({ log, metrics, changes }: { log: Logger; metrics: Metrics; changes: ChangeFeed }) {
  type Registered = { controller: Controller; queue: WorkQueue | null; timer: NodeJS.Timeout | null; started: boolean };
  const registered: Registered[] = [];
  let running = false;
  /** Bumped by each start and stop, so a start that a stop overtook gives up. */
  let epochs = 0;
  let unsubscribe: (() => void) | null = null;

  const passSeconds = new Histogram({
    name: 'awan_reconcile_pass_seconds',
    help: 'How long one reconcile pass took, by controller',
    labelNames: ['controller'],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [metrics.registry],
  });
  const passes = new Counter({ name: 'awan_reconcile_passes_total', help: 'Reconcile passes run, by controller', labelNames: ['controller'], registers: [metrics.registry] });
  new Gauge({
    name: 'awan_reconcile_queue_depth',
    help: 'Keys waiting in a controller queue',
    labelNames: ['controller'],
    registers: [metrics.registry],
    collect() {
      this.reset();
      for (const r of registered) this.set({ controller: r.controller.name }, r.queue?.depth ?? 0);
    },
  });
  new Gauge({
    name: 'awan_controllers_running',
    help: '1 while this process runs its controllers (it leads), else 0',
    registers: [metrics.registry],
    collect() {
      this.set(running ? 1 : 0);
    },
  });

  function queueFor(c: Controller): WorkQueue {
    return new WorkQueue({
      name: c.name,
      log,
      concurrency: c.concurrency,
      onError: () => metrics.reconcileErrors.inc({ controller: c.name }),
      reconcile: async (key) => {
        const end = passSeconds.startTimer({ controller: c.name });
        try {
          return await c.reconcile(key);
        } finally {
          end();
          passes.inc({ controller: c.name });
        }
      },
    });
  }

  async function route(change: Change): Promise<void> {
    for (const r of registered) {
      if (!r.queue || !r.controller.watches.includes(change.kind)) continue;
      const keys = r.controller.keysFor ? await r.controller.keysFor(change) : [change.id];
      for (const k of keys) r.queue.add(k);
    }
  }

  async function resync(r: Registered): Promise<void> {
    try {
      for (const key of await r.controller.listKeys()) r.queue?.add(key);
    } catch (err) {
      log.warn({ err, controller: r.controller.name }, 'resync failed');
    }
  }

  /**
   * Starts every controller: on a single process at once, on replicas when this one becomes leader. Each
   * controller's start() runs before its first pass: its queue is made only then, and the resync that
   * follows queues every key, so changes announced meanwhile are not lost. A stop() while starting wins.
   * If a controller's start() fails, what was started is stopped again and the error is thrown.
   */
  async function start(): Promise<void> {
    if (running) return;
    running = true;
    const epoch = ++epochs;
    const current = () => running && epoch === epochs;
    unsubscribe = changes.subscribe((c) => void route(c).catch((err: unknown) => log.warn({ err, change: c }, 'could not route a change')));
    try {
      for (const r of registered) {
        // Passes a previous run left going finish first: a key is never worked on twice at once.
        await r.queue?.idle();
        if (!current()) return;
        await r.controller.start?.();
        if (!current()) {
          await stopOne(r.controller); // the stop that overtook us did not know it had started
          return;
        }
        r.started = true;
        r.queue = queueFor(r.controller);
        await resync(r);
        if (!current()) return;
        r.timer = setInterval(() => void resync(r), r.controller.resyncMs ?? 30_000);
        r.timer.unref();
      }
    } catch (err) {
      if (current()) await stop();
      throw err;
    }
    log.info({ controllers: registered.map((r) => r.controller.name) }, 'controllers started');
  }

  /** Stops every controller, also while they start; passes already running may still finish (see idle). */
  async function stop(): Promise<void> {
    if (!running) return;
    running = false;
    epochs++;
    unsubscribe?.();
    unsubscribe = null;
    for (const r of registered) {
      if (r.timer) clearInterval(r.timer);
      r.timer = null;
      r.queue?.stop();
      if (r.started) await stopOne(r.controller);
      r.started = false;
    }
  }

  async function stopOne(c: Controller): Promise<void> {
    try {
      await c.stop?.();
    } catch (err) {
      log.warn({ err, controller: c.name }, 'controller did not stop cleanly');
    }
  }

  const handle = (name: string): RunningController => {
    const r = registered.find((x) => x.controller.name === name);
    if (!r) throw new Error(`no controller named ${name}`);
    return {
      name,
      get queue() {
        if (!r.queue) throw new Error(`controller ${name} is not running`);
        return r.queue;
      },
      enqueue: (key) => r.queue?.add(key),
      enqueueAfter: (key, delayMs) => r.queue?.addAfter(key, delayMs),
    };
  };

  return {
    register(controller: Controller): RunningController {
      if (registered.some((r) => r.controller.name === controller.name)) throw new Error(`controller ${controller.name} is registered twice`);
      registered.push({ controller, queue: null, timer: null, started: false });
      return handle(controller.name);
    },
    get: handle,
    get running() {
      return running;
    },
    names: () => registered.map((r) => r.controller.name),

    start,
    stop,

    /** Resolves once no controller has a pass queued or running. */
    async idle(): Promise<void> {
      await Promise.all(registered.map((r) => r.queue?.idle()));
    },
  };
}
