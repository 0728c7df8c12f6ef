// Storage pools and the volumes in them. Control keeps them in SQL; agents do the work on the pool's files.
// A volume's spec (size, deleting) is the API's, bumped by `generation`; its status (state, observed size,
// message) is the volume controller's, written by compare-and-set on the generation it read.
import { type Kysely, sql } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('pools')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('path', 'text', (c) => c.notNull())
    .addColumn('host_id', 'text')
    .addColumn('capacity_mib', 'integer')
    .addColumn('free_mib', 'integer')
    .addColumn('reported_at', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  // One local pool per host.
  await sql`create unique index pools_one_local_per_host on pools (host_id) where type = 'local'`.execute(db);
  await db.schema
    .createTable('volumes')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('pool_id', 'text', (c) => c.notNull().references('pools.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('vm_id', 'text')
    .addColumn('format', 'text', (c) => c.notNull())
    .addColumn('backing_path', 'text')
    .addColumn('backing_format', 'text')
    .addColumn('size_mib', 'integer', (c) => c.notNull())
    .addColumn('deleting', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('generation', 'integer', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('actual_size_mib', 'integer')
    .addColumn('observed_generation', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('message', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('volumes_pool_name').unique().on('volumes').columns(['pool_id', 'name']).execute();
  await db.schema.createIndex('volumes_vm').on('volumes').column('vm_id').execute();
}
