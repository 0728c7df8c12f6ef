// The SQL of the leader lease and the replicas table. Every time is the database's clock in milliseconds
// (replicas may disagree about the time; the database is the one clock they share), and every change of
// the lease is one compare-and-set statement, so two replicas can never both take it.
import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { Dialect } from '../store/db.ts';

const LEASE = 'control';

export interface LeaseHeld {
  epoch: number;
  expiresAtMs: number;
}

export interface LeaderInfo {
  id: string;
  url: string;
  epoch: number;
  expiresAtMs: number;
  /** The database's clock when this was read. */
  nowMs: number;
}

export interface ReplicaInfo {
  id: string;
  url: string;
  startedAtMs: number;
  lastSeenAtMs: number;
}

export type LeaseStore = ReturnType<typeof createLeaseStore>;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the lease's tables are reached by raw SQL only
export function createLeaseStore(db: Kysely<any>, dialect: Dialect) {
  const now: RawBuilder<number> =
    dialect === 'postgres'
      ? sql<number>`(extract(epoch from clock_timestamp()) * 1000)::bigint`
      : sql<number>`cast(round((julianday('now') - 2440587.5) * 86400000) as integer)`;
  const num = (v: unknown) => Number(v);

  return {
    /**
     * Takes the lease (force: whoever holds it, for the single process of SQLite) when nobody holds it, when its holder let it expire, or when this replica held it
     * itself; every taking is a new epoch. Undefined when another replica holds it.
     */
    async acquire(holder: string, url: string, leaseMs: number, opts: { force?: boolean } = {}): Promise<LeaseHeld | undefined> {
      const taken = opts.force ? sql`1 = 1` : sql`control_leader.expires_at_ms <= ${now} or control_leader.holder = ${holder}`;
      const { rows } = await sql<{ epoch: unknown; expires_at_ms: unknown }>`
        insert into control_leader (name, holder, holder_url, epoch, expires_at_ms)
        values (${LEASE}, ${holder}, ${url}, 1, ${now} + ${leaseMs})
        on conflict (name) do update set
          holder = excluded.holder, holder_url = excluded.holder_url,
          epoch = control_leader.epoch + 1, expires_at_ms = excluded.expires_at_ms
        where ${taken}
        returning epoch, expires_at_ms`.execute(db);
      return rows[0] ? { epoch: num(rows[0].epoch), expiresAtMs: num(rows[0].expires_at_ms) } : undefined;
    },

    /** Extends the lease this replica holds at this epoch, if it has not expired; false when it is lost. */
    async renew(holder: string, epoch: number, url: string, leaseMs: number): Promise<boolean> {
      const { rows } = await sql<{ epoch: unknown }>`
        update control_leader set expires_at_ms = ${now} + ${leaseMs}, holder_url = ${url}
        where name = ${LEASE} and holder = ${holder} and epoch = ${epoch} and expires_at_ms > ${now}
        returning epoch`.execute(db);
      return rows.length === 1;
    },

    /** Gives the lease up at once (a clean shutdown), so another replica need not wait for it to expire. */
    async release(holder: string, epoch: number): Promise<void> {
      await sql`update control_leader set expires_at_ms = 0 where name = ${LEASE} and holder = ${holder} and epoch = ${epoch}`.execute(db);
    },

    /** The replica holding an unexpired lease, if any. */
    async leader(): Promise<LeaderInfo | undefined> {
      const { rows } = await sql<{ holder: string; holder_url: string; epoch: unknown; expires_at_ms: unknown; now_ms: unknown }>`
        select holder, holder_url, epoch, expires_at_ms, ${now} as now_ms from control_leader
        where name = ${LEASE} and expires_at_ms > ${now}`.execute(db);
      const r = rows[0];
      return r ? { id: r.holder, url: r.holder_url, epoch: num(r.epoch), expiresAtMs: num(r.expires_at_ms), nowMs: num(r.now_ms) } : undefined;
    },

    /** The highest epoch ever given out (0 before the first leader). */
    async epoch(): Promise<number> {
      const { rows } = await sql<{ epoch: unknown }>`select epoch from control_leader where name = ${LEASE}`.execute(db);
      return rows[0] ? num(rows[0].epoch) : 0;
    },

    /** Says this replica is alive and where it answers. */
    async seen(id: string, url: string): Promise<void> {
      await sql`
        insert into control_replicas (id, url, started_at_ms, last_seen_at_ms) values (${id}, ${url}, ${now}, ${now})
        on conflict (id) do update set url = excluded.url, last_seen_at_ms = excluded.last_seen_at_ms`.execute(db);
    },

    /** Replicas seen within the last maxAgeMs, oldest first; long-gone ones are deleted on the way. */
    async live(maxAgeMs: number): Promise<ReplicaInfo[]> {
      await sql`delete from control_replicas where last_seen_at_ms < ${now} - ${maxAgeMs * 100}`.execute(db);
      const { rows } = await sql<{ id: string; url: string; started_at_ms: unknown; last_seen_at_ms: unknown }>`
        select id, url, started_at_ms, last_seen_at_ms from control_replicas
        where last_seen_at_ms >= ${now} - ${maxAgeMs} order by started_at_ms, id`.execute(db);
      return rows.map((r) => ({ id: r.id, url: r.url, startedAtMs: num(r.started_at_ms), lastSeenAtMs: num(r.last_seen_at_ms) }));
    },

    async forget(id: string): Promise<void> {
      await sql`delete from control_replicas where id = ${id}`.execute(db);
    },
  };
}
