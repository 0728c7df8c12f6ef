// VMs may keep their disk on their host's own storage instead of the shared pool.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('vms').addColumn('local_disk', 'integer', (c) => c.notNull().defaultTo(0)).execute();
}
