// Every SQL statement about memory leases. As with VMs, each write is a compare-and-set on
// `resource_version`: a writer that read an older row loses, re-reads and decides again.
import type { Kysely } from 'kysely';
import type { Database, LeaseRow, LeaseState } from '../../store/schema.ts';

export type LeasePatch = Partial<Omit<LeaseRow, 'id' | 'resource_version' | 'created_at' | 'updated_at'>>;
export type LeaseStore = ReturnType<typeof createLeaseStore>;

/** States in which a lease still holds or moves memory. */
export const openStates: LeaseState[] = ['requested', 'granting', 'active', 'returning'];

export function createLeaseStore(db: Kysely<Database>) {
  return {
    get: (id: string, trx: Kysely<Database> = db) => trx.selectFrom('memory_leases').selectAll().where('id', '=', id).executeTakeFirst(),

    list(q: { limit: number; after?: { at: string; id: string }; vmId?: string; state?: string }): Promise<LeaseRow[]> {
      let query = db.selectFrom('memory_leases').selectAll().orderBy('created_at').orderBy('id').limit(q.limit + 1);
      const c = q.after;
      if (c) query = query.where((eb) => eb.or([eb('created_at', '>', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '>', c.id)])]));
      if (q.vmId) query = query.where('vm_id', '=', q.vmId);
      if (q.state) query = query.where('state', '=', q.state as LeaseState);
      return query.execute();
    },

    /** Leases that hold or move memory; a finished temporary one and a settled permanent one are left out. */
    open: (trx: Kysely<Database> = db) => trx.selectFrom('memory_leases').selectAll().where('state', 'in', openStates).execute(),

    openFor: (vmId: string, trx: Kysely<Database> = db) =>
      trx.selectFrom('memory_leases').selectAll().where('vm_id', '=', vmId).where('state', 'in', openStates).execute(),

    /** Open leases a host lends to or borrows through. */
    openThrough: (hostId: string) =>
      db.selectFrom('memory_leases').selectAll().where('state', 'in', openStates)
        .where((eb) => eb.or([eb('donor_host_id', '=', hostId), eb('borrower_host_id', '=', hostId)])).execute(),

    countByState: () => db.selectFrom('memory_leases').select(['state', db.fn.countAll<number>().as('n')]).groupBy('state').execute(),

    insert: (row: LeaseRow, trx: Kysely<Database>) => trx.insertInto('memory_leases').values(row).execute(),

    write(lease: LeaseRow, patch: LeasePatch, trx: Kysely<Database> = db): Promise<LeaseRow | undefined> {
      return trx
        .updateTable('memory_leases')
        .set({ ...patch, resource_version: lease.resource_version + 1, updated_at: new Date().toISOString() })
        .where('id', '=', lease.id)
        .where('resource_version', '=', lease.resource_version)
        .returningAll()
        .executeTakeFirst();
    },
  };
}
