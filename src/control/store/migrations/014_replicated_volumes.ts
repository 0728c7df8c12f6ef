// Replicated storage: a VM may keep its disk on its host with a synchronous copy on a second host. The VM
// records that choice (spec); its volume records where the copy is and how it fares (status, the
// replicator's); copies that no longer count (a lost replica, the disk of a host that failed over) are
// listed per host until that host is back to delete them.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  const add = (table: string, name: string, type: 'integer' | 'text', def?: number) =>
    db.schema.alterTable(table).addColumn(name, type, (c) => (def === undefined ? c : c.notNull().defaultTo(def))).execute();
  await add('vms', 'replicated', 'integer', 0);
  await add('volumes', 'replicated', 'integer', 0);
  await add('volumes', 'replica_host_id', 'text');
  await add('volumes', 'replica_state', 'text');
  await add('volumes', 'replica_message', 'text');
  await add('volumes', 'replica_target', 'text');
  await add('volumes', 'replica_changed_at', 'text');
  await add('volumes', 'replica_token', 'integer');
  await db.schema
    .createTable('volume_leftovers')
    .addColumn('host_id', 'text', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('volume_leftovers_pk', ['host_id', 'name'])
    .execute();
}
