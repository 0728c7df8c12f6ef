// The event log: every state change is appended to SQL and fanned out to live subscribers (SSE). With
// replicas on PostgreSQL, each event's seq is announced on `awan_events`; every other replica reads the
// rows after the last seq it delivered, in order, and fans them out to its own subscribers.
import type { Kysely } from 'kysely';
import type { Logger } from '../../../lib/logger.ts';
import { MAX_PAYLOAD_BYTES, type NotifyBus } from '../../store/pg-notify.ts';
import type { Database, EventRow } from '../../store/schema.ts';

export interface AwanEvent {
  seq: number;
  at: string;
  type: string;
  objectKind: string;
  objectId: string;
  message: string;
  data?: Record<string, unknown>;
}

export type EventInput = Omit<AwanEvent, 'seq' | 'at'>;

export interface EventService {
  emit(e: EventInput): Promise<AwanEvent>;
  /** Writes an event inside the caller's transaction; `notify` it once that transaction committed. */
  record(e: EventInput, trx: Kysely<Database>): Promise<AwanEvent>;
  notify(e: AwanEvent): void;
  /** Fans an event out to live subscribers only (task progress ticks): it is not kept and has seq 0. */
  publish(e: EventInput): void;
  list(q: { after?: number; limit: number; objectId?: string; type?: string }): Promise<AwanEvent[]>;
  subscribe(listener: (e: AwanEvent) => void): () => void;
  /** Reads and delivers what other replicas wrote (no-op alone); resolves once caught up. */
  catchUp(): Promise<void>;
  close(): void;
}

export const toEvent = (r: EventRow): AwanEvent => ({
  seq: r.seq,
  at: r.at,
  type: r.type,
  objectKind: r.object_kind,
  objectId: r.object_id,
  message: r.message,
  ...(r.data ? { data: JSON.parse(r.data) as Record<string, unknown> } : {}),
});

export const EVENTS_CHANNEL = 'awan_events';
/** How long a hole in the seqs (a transaction that has not committed yet) holds back the events after it. */
const GAP_WAIT_MS = 2000;
/** Reads SQL this often even without a note, for notes lost while the link was down. */
const POLL_MS = 2000;

export function createEventService({ db, bus, log }: { db: Kysely<Database>; bus?: NotifyBus; log?: Logger }): EventService {
  const listeners = new Set<(e: AwanEvent) => void>();
  const fanOut = (e: AwanEvent) => {
    for (const l of listeners) l(e);
  };
  async function record(e: EventInput, trx: Kysely<Database>): Promise<AwanEvent> {
    const at = new Date().toISOString();
    const row = await trx
      .insertInto('events')
      .values({ at, type: e.type, object_kind: e.objectKind, object_id: e.objectId, message: e.message, data: e.data ? JSON.stringify(e.data) : null })
      .returning('seq')
      .executeTakeFirstOrThrow();
    return { ...e, seq: row.seq, at };
  }
  const remote = bus ? createRemoteReader(db, bus, fanOut, log) : undefined;
  function notify(event: AwanEvent): void {
    remote?.delivered(event.seq);
    fanOut(event);
  }
  return {
    async emit(e) {
      const event = await record(e, db);
      notify(event);
      return event;
    },
    record,
    notify,
    publish(e) {
      const event: AwanEvent = { ...e, seq: 0, at: new Date().toISOString() };
      fanOut(event);
      remote?.sendEphemeral(event);
    },
    async list({ after, limit, objectId, type }) {
      let q = db.selectFrom('events').selectAll().orderBy('seq', 'asc').limit(limit);
      if (after !== undefined) q = q.where('seq', '>', after);
      if (objectId) q = q.where('object_id', '=', objectId);
      if (type) q = q.where('type', '=', type);
      return (await q.execute()).map(toEvent);
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    catchUp: () => remote?.read() ?? Promise.resolve(),
    close: () => remote?.close(),
  };
}

/**
 * Delivers events other replicas wrote. Notes say `origin s SEQ` (read SQL after the last seq delivered)
 * or `origin p JSON` (a kept-nowhere event such as task progress, delivered as it is). Rows are delivered
 * in seq order; a hole waits up to GAP_WAIT_MS for its transaction to commit, then is skipped (a rolled
 * back insert leaves one for good). Events this process emitted itself were delivered already.
 */
function createRemoteReader(db: Kysely<Database>, bus: NotifyBus, fanOut: (e: AwanEvent) => void, log?: Logger) {
  let watermark: number | undefined;
  const local = new Set<number>();
  let gapSince: number | undefined;
  let reading: Promise<void> | null = null;
  let again = false;
  let closed = false;
  const start = db.selectFrom('events').select((eb) => eb.fn.max('seq').as('m')).executeTakeFirst().then((r) => {
    watermark ??= Number(r?.m ?? 0);
  });

  async function readOnce(): Promise<void> {
    await start;
    for (;;) {
      const rows = await db.selectFrom('events').selectAll().where('seq', '>', watermark!).orderBy('seq').limit(500).execute();
      for (const r of rows) {
        if (r.seq !== watermark! + 1) {
          gapSince ??= Date.now();
          if (Date.now() - gapSince < GAP_WAIT_MS) {
            setTimeout(() => void read(), 100).unref();
            return;
          }
        }
        gapSince = undefined;
        watermark = r.seq;
        if (local.delete(r.seq)) continue;
        fanOut(toEvent(r));
      }
      for (const s of local) if (s <= watermark!) local.delete(s);
      if (rows.length < 500 || closed) return;
    }
  }

  function read(): Promise<void> {
    if (closed) return Promise.resolve();
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      do {
        again = false;
        await readOnce().catch((err: unknown) => log?.warn({ err }, 'could not read events of other replicas'));
      } while (again && !closed);
      reading = null;
    })();
    return reading;
  }

  bus.listen(EVENTS_CHANNEL, (payload) => {
    const [origin, kind, rest] = [payload.slice(0, payload.indexOf(' ')), payload[payload.indexOf(' ') + 1], payload.slice(payload.indexOf(' ') + 3)];
    if (origin === bus.origin) return;
    if (kind === 's') void read();
    else if (kind === 'p') {
      try {
        fanOut(JSON.parse(rest) as AwanEvent);
      } catch {
        // a note from a newer or broken replica: nothing to deliver
      }
    }
  });
  bus.onConnect(() => void read());
  const poll = setInterval(() => void read(), POLL_MS);
  poll.unref();

  return {
    /** An event this process emitted: delivered here already, announced to the others. */
    delivered(seq: number) {
      if (!seq) return;
      local.add(seq);
      bus.notify(EVENTS_CHANNEL, `${bus.origin} s ${seq}`);
    },
    sendEphemeral(e: AwanEvent) {
      const payload = `${bus.origin} p ${JSON.stringify(e)}`;
      if (Buffer.byteLength(payload) <= MAX_PAYLOAD_BYTES) bus.notify(EVENTS_CHANNEL, payload);
    },
    read,
    close() {
      closed = true;
      clearInterval(poll);
    },
  };
}
