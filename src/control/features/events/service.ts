// The event log: every state change is appended to SQL and fanned out to live subscribers (SSE).
import type { Kysely } from 'kysely';
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

export function createEventService({ db }: { db: Kysely<Database> }): EventService {
  const listeners = new Set<(e: AwanEvent) => void>();
  async function record(e: EventInput, trx: Kysely<Database>): Promise<AwanEvent> {
    const at = new Date().toISOString();
    const row = await trx
      .insertInto('events')
      .values({ at, type: e.type, object_kind: e.objectKind, object_id: e.objectId, message: e.message, data: e.data ? JSON.stringify(e.data) : null })
      .returning('seq')
      .executeTakeFirstOrThrow();
    return { ...e, seq: row.seq, at };
  }
  function notify(event: AwanEvent): void {
    for (const l of listeners) l(event);
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
      for (const l of listeners) l(event);
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
  };
}
