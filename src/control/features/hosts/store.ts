// All host SQL. A host row has two sides with one writer each: the spec (what the user wants:
// maintenance, labels, zone, a drain request, a power fence, a lifted quarantine) written by the API with compare-and-set on `generation`,
// and the status (state, facts, heartbeat, connection, lease) written only by the leader's host registry
// with compare-and-set on `status_version`, fenced by the leader's epoch. The sides share no column, so
// neither write can undo the other.
import type { Kysely } from 'kysely';
import { hashToken } from '../../../lib/ids.ts';
import { AppError } from '../../errors.ts';
import type { Database, HostRow } from '../../store/schema.ts';

export type HostSpec = Pick<HostRow, 'maintenance' | 'labels' | 'zone' | 'drain_task_id' | 'power_fence' | 'quarantine_lifted_at'>;
export type HostStatus = Pick<
  HostRow,
  'state' | 'cpus' | 'memory_mib' | 'memory_free_mib' | 'address' | 'driver' | 'accelerator' | 'capabilities' | 'last_heartbeat_at' | 'connected' | 'lease_expires_at' | 'vm_count' | 'memory_allocated_mib' | 'failed_at' | 'state_reason' | 'recent_failures' | 'quarantined_at' | 'power_fenced_for'
>;

export const specColumns = ['maintenance', 'labels', 'zone', 'drain_task_id', 'power_fence', 'quarantine_lifted_at', 'generation', 'updated_at'] as const satisfies readonly (keyof HostRow)[];
export const statusColumns = [
  'state', 'cpus', 'memory_mib', 'memory_free_mib', 'address', 'driver', 'accelerator', 'capabilities', 'last_heartbeat_at',
  'connected', 'lease_expires_at', 'vm_count', 'memory_allocated_mib', 'status_version', 'status_epoch', 'failed_at', 'state_reason',
  'recent_failures', 'quarantined_at', 'power_fenced_for',
] as const satisfies readonly (keyof HostRow)[];

/** One host's status as the leader wants it written, checked against the version it last wrote. */
export interface StatusWrite {
  id: string;
  statusVersion: number;
  patch: Partial<HostStatus>;
}

export type HostStore = ReturnType<typeof createHostStore>;

export function createHostStore(db: Kysely<Database>) {
  return {
    all: (): Promise<HostRow[]> => db.selectFrom('hosts').selectAll().orderBy('name').execute(),

    get: (id: string, trx: Kysely<Database> = db): Promise<HostRow | undefined> => trx.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst(),

    async find(idOrName: string): Promise<HostRow | undefined> {
      const rows = await db.selectFrom('hosts').selectAll().where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).execute();
      return rows.find((r) => r.id === idOrName) ?? rows[0];
    },

    /** Writes spec only if nobody changed it since `row` was read; undefined when someone did. */
    async updateSpec(row: HostRow, patch: Partial<HostSpec>, trx: Kysely<Database> = db): Promise<HostRow | undefined> {
      return trx
        .updateTable('hosts')
        .set({ ...patch, generation: row.generation + 1, updated_at: new Date().toISOString() })
        .where('id', '=', row.id)
        .where('generation', '=', row.generation)
        .returningAll()
        .executeTakeFirst();
    },

    /**
     * Writes one host's status if its status_version is still the one given and no newer leader wrote it
     * (status_epoch ≤ epoch); returns the new row, or undefined when the compare-and-set lost.
     */
    async updateStatus(w: StatusWrite, epoch: number): Promise<HostRow | undefined> {
      return db
        .updateTable('hosts')
        .set({ ...w.patch, status_version: w.statusVersion + 1, status_epoch: epoch })
        .where('id', '=', w.id)
        .where('status_version', '=', w.statusVersion)
        .where('status_epoch', '<=', epoch)
        .returningAll()
        .executeTakeFirst();
    },

    /**
     * A replica that does not lead renews a host's lease (the agent dialled it while looking for the
     * leader): only forward, and never for a host already failed, so a leader that declared it failed
     * (compare-and-set on status_version, which this bumps) and this renewal cannot both win.
     */
    async extendLease(id: string, until: string): Promise<boolean> {
      const r = await db
        .updateTable('hosts')
        .set((eb) => ({ lease_expires_at: until, status_version: eb('status_version', '+', 1) }))
        .where('id', '=', id)
        .where('state', 'not in', ['failed', 'fenced'])
        .where((eb) => eb.or([eb('lease_expires_at', 'is', null), eb('lease_expires_at', '<', until)]))
        .executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },

    /** Many status writes in one transaction (the heartbeat batch); returns the ids whose write lost. */
    async updateStatusBatch(writes: StatusWrite[], epoch: number): Promise<{ written: HostRow[]; lost: string[] }> {
      const written: HostRow[] = [];
      const lost: string[] = [];
      if (writes.length === 0) return { written, lost };
      await db.transaction().execute(async (trx) => {
        for (const w of writes) {
          const row = await trx
            .updateTable('hosts')
            .set({ ...w.patch, status_version: w.statusVersion + 1, status_epoch: epoch })
            .where('id', '=', w.id)
            .where('status_version', '=', w.statusVersion)
            .where('status_epoch', '<=', epoch)
            .returningAll()
            .executeTakeFirst();
          if (row) written.push(row);
          else lost.push(w.id);
        }
      });
      return { written, lost };
    },

    /** Hosts whose drain request has an unfinished task: the drain controller's keys. */
    async draining(): Promise<string[]> {
      const rows = await db
        .selectFrom('hosts')
        .innerJoin('tasks', 'tasks.id', 'hosts.drain_task_id')
        .select('hosts.id')
        .where('tasks.state', 'in', ['queued', 'running'])
        .execute();
      return rows.map((r) => r.id);
    },

    async createJoinToken(row: Database['join_tokens']): Promise<void> {
      await db.insertInto('join_tokens').values(row).execute();
    },

    /** Spends a join token and inserts the host it lets in, in one transaction. */
    async join(joinToken: string, row: HostRow): Promise<void> {
      const now = new Date().toISOString();
      await db.transaction().execute(async (trx) => {
        const used = await trx
          .updateTable('join_tokens')
          .set({ used_at: now, host_id: row.id })
          .where('token_hash', '=', hashToken(joinToken))
          .where('used_at', 'is', null)
          .where('expires_at', '>', now)
          .executeTakeFirst();
        if (Number(used.numUpdatedRows) !== 1) throw new AppError('UNAUTHORIZED', 'the join token is unknown, used or expired');
        const taken = await trx.selectFrom('hosts').select('id').where('name', '=', row.name).executeTakeFirst();
        if (taken) throw new AppError('NAME_TAKEN', `a host named ${row.name} already exists`, { name: row.name });
        await trx.insertInto('hosts').values(row).execute();
      });
    },

    async byCredential(credential: string): Promise<string | undefined> {
      const row = await db.selectFrom('hosts').select('id').where('credential_hash', '=', hashToken(credential)).executeTakeFirst();
      return row?.id;
    },

  };
}
