// Tasks: the record of every long operation, its progress and its result, persisted so that a restart of
// control can resume or fail it with a reason.
import type { Kysely } from 'kysely';
import { notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import type { Database, TaskRow } from '../../store/schema.ts';
import { newId } from '../../../lib/ids.ts';
import type { AwanEvent, EventService } from '../events/service.ts';

export const taskStates = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type TaskState = (typeof taskStates)[number];

/** Every kind of task there is: the list filter accepts these and no other. */
export const taskKinds = ['create', 'start', 'stop', 'reboot', 'migrate', 'set-memory', 'delete', 'drain', 'memory-borrow', 'memory-return', 'memory-make-permanent'] as const;
export type TaskKind = (typeof taskKinds)[number];

export interface Task {
  id: string;
  kind: string;
  targetKind: string;
  targetId: string;
  state: TaskState;
  progress: number;
  message: string | null;
  error: { code: string; message: string } | null;
  result: Record<string, unknown> | null;
  params: Record<string, unknown> | null;
  createdBy: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  updatedAt: string;
}

export const isFinished = (s: TaskState) => s === 'succeeded' || s === 'failed' || s === 'cancelled';

export const toTask = (r: TaskRow): Task => ({
  id: r.id,
  kind: r.kind,
  targetKind: r.target_kind,
  targetId: r.target_id,
  state: r.state,
  progress: r.progress,
  message: r.message,
  error: r.error_code ? { code: r.error_code, message: r.error_message ?? '' } : null,
  result: r.result ? (JSON.parse(r.result) as Record<string, unknown>) : null,
  params: r.params ? (JSON.parse(r.params) as Record<string, unknown>) : null,
  createdBy: r.created_by,
  createdAt: r.created_at,
  startedAt: r.started_at,
  finishedAt: r.finished_at,
  updatedAt: r.updated_at,
});

export interface TaskService {
  /** Records a running task; pass a transaction to make it part of a larger change. */
  create(t: { kind: TaskKind; targetKind: string; targetId: string; createdBy?: string | null; params?: Record<string, unknown>; message?: string }, trx?: Kysely<Database>): Promise<Task>;
  progress(id: string, progress: number, message?: string): Promise<void>;
  succeed(id: string, message: string, result?: Record<string, unknown>): Promise<void>;
  fail(id: string, code: string, message: string): Promise<void>;
  /** Fails tasks inside the caller's transaction; `events.notify` what it returns once that committed. */
  failIn(trx: Kysely<Database>, ids: string[], code: string, message: string): Promise<AwanEvent[]>;
  cancelled(id: string, message: string): Promise<void>;
  /** Cancels tasks inside the caller's transaction (a newer request supersedes them); notify what it returns. */
  cancelIn(trx: Kysely<Database>, ids: string[], message: string): Promise<AwanEvent[]>;
  get(id: string): Promise<Task>;
  list(q: { limit: number; cursor?: string; state?: string; targetId?: string; kind?: string }): Promise<{ items: Task[]; nextCursor: string | null }>;
  /** Unfinished tasks on one object, oldest first. A VM has at most one (the database holds to it). */
  activeFor(targetId: string, trx?: Kysely<Database>): Promise<Task[]>;
  unfinished(): Promise<Task[]>;
}

const PERSIST_PROGRESS_MS = 2000;

export function createTaskService({ db, events }: { db: Kysely<Database>; events: EventService }): TaskService {
  /** The latest progress of running tasks, ahead of what SQL holds. */
  const live = new Map<string, { progress: number; message: string | null; updatedAt: string; persistedAt: number }>();
  const withLive = (t: Task): Task => {
    const l = live.get(t.id);
    if (!l || isFinished(t.state)) return t;
    return { ...t, progress: l.progress, message: l.message, updatedAt: l.updatedAt };
  };
  /** Finishes a task inside `q`; the event it returns is for the caller to notify once `q` committed. */
  const finishIn = async (q: Kysely<Database>, id: string, state: TaskState, message: string, extra: Partial<TaskRow>): Promise<AwanEvent | undefined> => {
    const now = new Date().toISOString();
    const updated = await q
      .updateTable('tasks')
      .set({ state, message, progress: state === 'succeeded' ? 100 : undefined, finished_at: now, updated_at: now, ...extra })
      .where('id', '=', id)
      .where('state', 'in', ['queued', 'running'])
      .returningAll()
      .executeTakeFirst();
    live.delete(id);
    if (!updated) return undefined; // already finished: finishing is idempotent
    return events.record(
      {
        type: `task.${state}`,
        objectKind: 'task',
        objectId: id,
        message: `${updated.kind} of ${updated.target_kind} ${updated.target_id}: ${message}`,
        data: { kind: updated.kind, targetId: updated.target_id, ...(extra.error_code ? { code: extra.error_code } : {}) },
      },
      q,
    );
  };
  const finish = async (id: string, state: TaskState, message: string, extra: Partial<TaskRow>) => {
    const event = await finishIn(db, id, state, message, extra);
    if (event) events.notify(event);
  };

  return {
    async create(t, trx = db) {
      const now = new Date().toISOString();
      const row: TaskRow = {
        id: newId(),
        kind: t.kind,
        target_kind: t.targetKind,
        target_id: t.targetId,
        state: 'running',
        progress: 0,
        message: t.message ?? null,
        error_code: null,
        error_message: null,
        result: null,
        params: t.params ? JSON.stringify(t.params) : null,
        created_by: t.createdBy ?? null,
        created_at: now,
        started_at: now,
        finished_at: null,
        updated_at: now,
      };
      await trx.insertInto('tasks').values(row).execute();
      return toTask(row);
    },
    async progress(id, progress, message) {
      const pct = Math.max(0, Math.min(99, Math.round(progress)));
      const now = Date.now();
      const prev = live.get(id);
      // The first tick counts as persisted: a task that ends within seconds never writes its progress.
      const entry = { progress: pct, message: message ?? prev?.message ?? null, updatedAt: new Date(now).toISOString(), persistedAt: prev?.persistedAt ?? now };
      live.set(id, entry);
      events.publish({ type: 'task.progress', objectKind: 'task', objectId: id, message: message ?? '', data: { progress: pct } });
      // Progress ticks are many and short-lived: readers see them from memory; SQL gets one every few seconds.
      if (now - entry.persistedAt < PERSIST_PROGRESS_MS) return;
      entry.persistedAt = now;
      await db
        .updateTable('tasks')
        .set({ progress: pct, message: entry.message, updated_at: entry.updatedAt })
        .where('id', '=', id)
        .where('state', 'in', ['queued', 'running'])
        .execute();
    },
    succeed: (id, message, result) => finish(id, 'succeeded', message, { result: result ? JSON.stringify(result) : null }),
    fail: (id, code, message) => finish(id, 'failed', message, { error_code: code, error_message: message }),
    async failIn(trx, ids, code, message) {
      const done: AwanEvent[] = [];
      for (const id of ids) {
        const e = await finishIn(trx, id, 'failed', message, { error_code: code, error_message: message });
        if (e) done.push(e);
      }
      return done;
    },
    cancelled: (id, message) => finish(id, 'cancelled', message, { error_code: 'CANCELLED', error_message: message }),
    async cancelIn(trx, ids, message) {
      const done: AwanEvent[] = [];
      for (const id of ids) {
        const e = await finishIn(trx, id, 'cancelled', message, { error_code: 'CANCELLED', error_message: message });
        if (e) done.push(e);
      }
      return done;
    },
    async get(id) {
      const row = await db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
      if (!row) throw notFound('TASK_NOT_FOUND', 'task', id);
      return withLive(toTask(row));
    },
    async list({ limit, cursor, state, targetId, kind }) {
      const c = decodeCursor(cursor);
      let q = db.selectFrom('tasks').selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limit + 1);
      if (c) q = q.where((eb) => eb.or([eb('created_at', '<', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '<', c.id)])]));
      if (state) q = q.where('state', '=', state as TaskState);
      if (targetId) q = q.where('target_id', '=', targetId);
      if (kind) q = q.where('kind', '=', kind);
      const rows = (await q.execute()).map((r) => withLive(toTask(r)));
      return page(rows, limit, (t) => ({ at: t.createdAt, id: t.id }));
    },
    async activeFor(targetId, trx = db) {
      const rows = await trx.selectFrom('tasks').selectAll().where('target_id', '=', targetId).where('state', 'in', ['queued', 'running']).orderBy('created_at').execute();
      return rows.map(toTask);
    },
    async unfinished() {
      const rows = await db.selectFrom('tasks').selectAll().where('state', 'in', ['queued', 'running']).orderBy('created_at').execute();
      return rows.map(toTask);
    },
  };
}
