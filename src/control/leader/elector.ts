// Leader election of the control replicas: each tries to take the lease every retry period; the holder
// renews it every renew period and steps down by itself when no renewal has succeeded for renewDeadlineMs,
// which is shorter than the lease, so it has stopped leading before another replica can take the lease.
// On SQLite there is one process: it takes the lease once (a new epoch) and leads until it stops.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../lib/logger.ts';
import { newId } from '../../lib/ids.ts';
import type { LeaderInfo, LeaseStore, ReplicaInfo } from './lease.ts';

export interface LeaderConfig {
  /** How long a taken or renewed lease lasts (database clock). */
  leaseMs?: number;
  /** How often the leader renews it. */
  renewMs?: number;
  /** How often a replica that does not lead tries to take it (and says it is alive). */
  retryMs?: number;
  /** The leader steps down when it has not renewed for this long; must be below leaseMs. */
  renewDeadlineMs?: number;
}

export const LEADER_DEFAULTS = { leaseMs: 5000, renewMs: 1000, retryMs: 1000, renewDeadlineMs: 3500 } as const;

export interface LeadershipHandlers {
  /** This replica leads from now on, at this epoch: start what only the leader runs. */
  onLead(epoch: number): Promise<void>;
  /** It leads no more: stop all of it at once (the first lines must be synchronous). */
  onLose(reason: string): Promise<void>;
  /** After each round of the loop (a renewal or an attempt), with the replicas alive now. */
  onTick?(): void;
}

export interface Leadership {
  readonly replicaId: string;
  readonly isLeader: boolean;
  /** The epoch this replica leads at; 0 when it does not lead. */
  readonly epoch: number;
  /** Whether this is the single-process (SQLite) mode. */
  readonly single: boolean;
  /** The replica that leads now, from the database. */
  leader(): Promise<LeaderInfo | undefined>;
  /** Replicas seen within three retry periods. */
  replicas(): Promise<ReplicaInfo[]>;
  start(handlers: LeadershipHandlers): Promise<void>;
  /** Stops leading (releasing the lease so another replica takes over at once) and trying to. */
  stop(): Promise<void>;
}

export function createLeadership(opts: {
  store: LeaseStore;
  single: boolean;
  /** Where this replica answers; undefined until it listens. */
  url: () => string | undefined;
  log: Logger;
  config?: LeaderConfig;
}): Leadership {
  const { store, log } = opts;
  const cfg: Required<LeaderConfig> = { ...LEADER_DEFAULTS, ...Object.fromEntries(Object.entries(opts.config ?? {}).filter(([, v]) => v !== undefined)) };
  if (cfg.renewDeadlineMs >= cfg.leaseMs) cfg.renewDeadlineMs = Math.max(1, Math.floor(cfg.leaseMs * 0.7));
  const replicaId = `r_${newId()}`;
  let handlers: LeadershipHandlers | undefined;
  let leading = false;
  let epoch = 0;
  let stopped = false;
  let loop: NodeJS.Timeout | null = null;
  let deadline: NodeJS.Timeout | null = null;
  /** Leadership changes one at a time: a loss waits for the start it interrupts, and undoes it. */
  let transitions: Promise<void> = Promise.resolve();
  const url = () => opts.url() ?? '';

  function armDeadline(renewStartedMs: number): void {
    if (deadline) clearTimeout(deadline);
    const left = renewStartedMs + cfg.renewDeadlineMs - performance.now();
    deadline = setTimeout(() => stepDown(`no renewal of the lease for ${cfg.renewDeadlineMs} ms`), Math.max(0, left));
    deadline.unref();
  }

  function stepDown(reason: string): void {
    if (!leading) return;
    leading = false;
    const lost = epoch;
    epoch = 0;
    if (deadline) clearTimeout(deadline);
    deadline = null;
    log[stopped ? 'info' : 'warn']({ replicaId, epoch: lost, reason }, 'stopped leading');
    const h = handlers;
    // onLose's synchronous part runs now, before anything else on this event loop.
    const done = h ? h.onLose(reason) : Promise.resolve();
    transitions = transitions.then(() => done).catch((err: unknown) => log.error({ err }, 'stopping the leader\'s work failed'));
  }

  function becomeLeader(held: number, renewStartedMs: number): void {
    leading = true;
    epoch = held;
    if (!opts.single) armDeadline(renewStartedMs);
    log.info({ replicaId, epoch: held, url: url() }, 'leading');
    transitions = transitions
      .then(async () => {
        if (!leading || epoch !== held) return; // lost again before it could start
        await handlers?.onLead(held);
      })
      .catch((err: unknown) => {
        // A leader that cannot start its work must not hold the lease: give it to another replica.
        log.error({ err }, 'could not start leading; giving the lease up');
        stepDown('start failed');
        void store.release(replicaId, held).catch(() => undefined);
      });
  }

  async function round(): Promise<void> {
    const started = performance.now();
    const here = url();
    if (here) await store.seen(replicaId, here).catch((err: unknown) => log.warn({ err }, 'could not record this replica'));
    if (leading) {
      const held = epoch;
      const ok = await store.renew(replicaId, held, here, cfg.leaseMs).catch((err: unknown) => {
        log.warn({ err }, 'could not renew the leader lease');
        return undefined;
      });
      if (ok === true && leading && epoch === held) armDeadline(started);
      else if (ok === false) stepDown('the lease was taken or expired');
      // undefined (an error): keep leading until the deadline, the next round may get through
    } else {
      const held = await store.acquire(replicaId, here, cfg.leaseMs).catch((err: unknown) => {
        log.warn({ err }, 'could not try for the leader lease');
        return undefined;
      });
      if (held && !stopped) {
        // Started before the statement ran, so the database's expiry is later than this process thinks.
        if (performance.now() - started < cfg.renewDeadlineMs) becomeLeader(held.epoch, started);
        else void store.release(replicaId, held.epoch).catch(() => undefined);
      }
    }
    handlers?.onTick?.();
  }

  function schedule(): void {
    if (stopped) return;
    loop = setTimeout(() => {
      void round().finally(schedule);
    }, leading ? cfg.renewMs : cfg.retryMs);
    loop.unref();
  }

  return {
    replicaId,
    get isLeader() {
      return leading;
    },
    get epoch() {
      return epoch;
    },
    single: opts.single,
    leader: () => store.leader(),
    async replicas() {
      if (!opts.single) return store.live(cfg.retryMs * 3 + cfg.renewMs);
      const here = url();
      return here ? [{ id: replicaId, url: here, startedAtMs: 0, lastSeenAtMs: 0 }] : [];
    },

    async start(h) {
      handlers = h;
      if (opts.single) {
        // Nobody else runs on this database: take the lease whoever held it (a process killed earlier).
        const held = await store.acquire(replicaId, url(), 365 * 86400_000, { force: true });
        if (!held) throw new Error('could not take the leader lease of a single-process control');
        becomeLeader(held.epoch, performance.now());
      } else {
        await round();
        schedule();
      }
      await transitions;
    },

    async stop() {
      stopped = true;
      if (loop) clearTimeout(loop);
      const held = epoch;
      stepDown('control is shutting down');
      await transitions;
      if (held) await store.release(replicaId, held).catch((err: unknown) => log.warn({ err }, 'could not release the leader lease'));
      if (!opts.single) await store.forget(replicaId).catch(() => undefined);
    },
  };
}
