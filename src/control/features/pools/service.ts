// Pools as control knows them: the shared pools an admin registers (the default one at start), each host's
// local pool as its agent reports it, and which connected hosts reach which pool. Only agents touch pools.
import { normalize } from 'node:path';
import type { Kysely } from 'kysely';
import { looksLikeId, newId } from '../../../lib/ids.ts';
import type { PoolRefMsg, PoolReportMsg } from '../../../protocol/messages.ts';
import { AppError, notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import type { Database, PoolRow } from '../../store/schema.ts';
import type { EventService } from '../events/service.ts';
import type { HostRegistry } from '../hosts/registry.ts';
import { type CreatePool, type Pool, poolFromRow } from './model.ts';

export const DEFAULT_POOL = 'shared';

export interface ListPools {
  limit: number;
  cursor?: string;
  type?: 'local' | 'shared';
  hostId?: string;
}

export type PoolService = ReturnType<typeof createPoolService>;

export function createPoolService({ db, events, registry }: { db: Kysely<Database>; events: EventService; registry: HostRegistry }) {
  /** Shared pools by path, for the welcome every agent gets (sync: the gateway answers at once). */
  let shared: PoolRefMsg[] = [];
  /** Pool id → hosts whose last report said they reach it. */
  const reach = new Map<string, Set<string>>();

  const connected = (hostId: string) => {
    const h = registry.get(hostId);
    return !!h?.connection && h.row.state === 'ready';
  };
  const hostsOf = (r: PoolRow) =>
    r.type === 'local' ? (r.host_id && connected(r.host_id) ? [r.host_id] : []) : [...(reach.get(r.id) ?? [])].filter(connected);

  async function loadShared(): Promise<void> {
    const rows = await db.selectFrom('pools').select(['type', 'path']).where('type', '=', 'shared').orderBy('created_at').execute();
    shared = rows.map((r) => ({ type: 'shared', path: r.path }));
  }

  async function find(idOrName: string): Promise<PoolRow> {
    const row = await db.selectFrom('pools').selectAll().where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).executeTakeFirst();
    if (!row) throw notFound('POOL_NOT_FOUND', 'pool', idOrName);
    return row;
  }

  async function insert(row: PoolRow): Promise<void> {
    await db.insertInto('pools').values(row).execute();
    await events.emit({ type: 'pool.created', objectKind: 'pool', objectId: row.id, message: `${row.type} pool ${row.name} at ${row.path}`, data: { type: row.type, hostId: row.host_id } });
  }

  const stats = (r: PoolReportMsg, now: string) => ({ capacity_mib: r.capacityMiB ?? null, free_mib: r.freeMiB ?? null, reported_at: now, updated_at: now });

  return {
    find,
    async get(idOrName: string): Promise<Pool> {
      const r = await find(idOrName);
      return poolFromRow(r, hostsOf(r));
    },

    async list(q: ListPools): Promise<{ items: Pool[]; nextCursor: string | null }> {
      const c = decodeCursor(q.cursor);
      let query = db.selectFrom('pools').selectAll().orderBy('created_at').orderBy('id').limit(q.limit + 1);
      if (c) query = query.where((eb) => eb.or([eb('created_at', '>', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '>', c.id)])]));
      if (q.type) query = query.where('type', '=', q.type);
      if (q.hostId) query = query.where('host_id', '=', q.hostId);
      const rows = (await query.execute()).map((r) => poolFromRow(r, hostsOf(r)));
      return page(rows, q.limit, (p) => ({ at: p.createdAt, id: p.id }));
    },

    /** An admin registers a shared pool: a directory every host mounts at the same path. */
    async create(body: CreatePool): Promise<Pool> {
      if (body.type !== 'shared') {
        throw new AppError('VALIDATION_FAILED', 'only shared pools are registered; a host\'s local pool appears when its agent connects', { type: body.type });
      }
      if (looksLikeId(body.name)) throw new AppError('VALIDATION_FAILED', `name ${body.name} has the form of an id; pick another name`, { name: body.name });
      const path = normalize(body.path).replace(/\/+$/, '');
      const taken = await db.selectFrom('pools').select(['name', 'path']).where((eb) => eb.or([eb('name', '=', body.name), eb.and([eb('path', '=', path), eb('type', '=', 'shared')])])).executeTakeFirst();
      if (taken?.name === body.name) throw new AppError('NAME_TAKEN', `a pool named ${body.name} already exists`, { name: body.name });
      if (taken) throw new AppError('CONFLICT', `pool ${taken.name} already is ${path}`, { pool: taken.name, path });
      const now = new Date().toISOString();
      const row: PoolRow = { id: newId(), name: body.name, type: 'shared', path, host_id: null, capacity_mib: null, free_mib: null, reported_at: null, created_at: now, updated_at: now };
      await insert(row);
      await loadShared();
      return poolFromRow(row, []);
    },

    /** The configured shared pool directory, registered (or re-pointed) when control starts. */
    async ensureDefault(path: string): Promise<PoolRow> {
      const existing = await db.selectFrom('pools').selectAll().where('name', '=', DEFAULT_POOL).executeTakeFirst();
      const now = new Date().toISOString();
      let row: PoolRow;
      if (!existing) {
        // Replicas starting together may both get here: the one that loses the unique name keeps the winner's row.
        row = { id: newId(), name: DEFAULT_POOL, type: 'shared', path, host_id: null, capacity_mib: null, free_mib: null, reported_at: null, created_at: now, updated_at: now };
        await db.insertInto('pools').values(row).onConflict((oc) => oc.column('name').doNothing()).execute();
        row = await db.selectFrom('pools').selectAll().where('name', '=', DEFAULT_POOL).executeTakeFirstOrThrow();
      } else if (existing.path !== path) {
        row = await db.updateTable('pools').set({ path, capacity_mib: null, free_mib: null, reported_at: null, updated_at: now }).where('id', '=', existing.id).returningAll().executeTakeFirstOrThrow();
      } else row = existing;
      await loadShared();
      return row;
    },

    sharedRefs: () => shared,

    /** The pools an agent reaches: its local pool is recorded (made on first sight), shared ones marked reachable. */
    async report(hostId: string, reports: PoolReportMsg[]): Promise<void> {
      const now = new Date().toISOString();
      for (const set of reach.values()) set.delete(hostId);
      for (const r of reports) {
        if (r.type === 'local') {
          const existing = await db.selectFrom('pools').selectAll().where('host_id', '=', hostId).where('type', '=', 'local').executeTakeFirst();
          if (existing) {
            await db.updateTable('pools').set({ path: r.path, ...stats(r, now) }).where('id', '=', existing.id).execute();
          } else {
            const host = registry.get(hostId);
            const row: PoolRow = { id: newId(), name: `${host?.row.name ?? hostId}-local`, type: 'local', path: r.path, host_id: hostId, created_at: now, ...stats(r, now) };
            await insert(row);
          }
          continue;
        }
        const pool = await db.selectFrom('pools').select('id').where('type', '=', 'shared').where('path', '=', r.path).executeTakeFirst();
        if (!pool) continue;
        if (r.error) continue;
        let set = reach.get(pool.id);
        if (!set) reach.set(pool.id, (set = new Set()));
        set.add(hostId);
        await db.updateTable('pools').set(stats(r, now)).where('id', '=', pool.id).execute();
      }
    },

    /** Free space as a volume command's answer reported it. */
    async recordStats(poolId: string, s: { capacityMiB: number; freeMiB: number }): Promise<void> {
      const now = new Date().toISOString();
      await db.updateTable('pools').set({ capacity_mib: s.capacityMiB, free_mib: s.freeMiB, reported_at: now, updated_at: now }).where('id', '=', poolId).execute();
    },

    /** Connected hosts that can work on the pool: the owner of a local pool; for a shared one, those that reach it (any ready host when none has said). */
    hostsFor(r: PoolRow): string[] {
      if (r.type === 'local') return hostsOf(r);
      const sure = hostsOf(r);
      if (sure.length > 0) return sure;
      return registry.all().filter((h) => connected(h.row.id)).map((h) => h.row.id);
    },

    localPoolOf: (hostId: string) => db.selectFrom('pools').selectAll().where('host_id', '=', hostId).where('type', '=', 'local').executeTakeFirst(),
  };
}
