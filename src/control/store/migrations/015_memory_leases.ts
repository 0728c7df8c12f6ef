// Memory leases: memory a VM borrows for a while or for good. The API writes the request and what the
// user asks of it later (return, make permanent: spec); the memory broker writes how far it got (status),
// including the plan it follows, so a restart of control takes a grant or a return up where it stopped.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('memory_leases')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vm_id', 'text', (c) => c.notNull())
    .addColumn('size_mib', 'integer', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('mechanism_asked', 'text', (c) => c.notNull())
    .addColumn('donor_asked', 'text')
    .addColumn('ttl_s', 'integer')
    .addColumn('origin', 'text', (c) => c.notNull())
    .addColumn('created_by', 'text')
    .addColumn('return_requested', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('permanent_requested', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('task_id', 'text')
    // Status, the broker's.
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('mechanism', 'text')
    .addColumn('borrower_host_id', 'text')
    .addColumn('donor_host_id', 'text')
    .addColumn('message', 'text')
    .addColumn('plan', 'text')
    .addColumn('step_deadline', 'text')
    .addColumn('expires_at', 'text')
    .addColumn('granted_at', 'text')
    .addColumn('ended_at', 'text')
    .addColumn('resource_version', 'integer', (c) => c.notNull().defaultTo(1))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('memory_leases_vm').on('memory_leases').column('vm_id').execute();
  await db.schema.createIndex('memory_leases_state').on('memory_leases').column('state').execute();
  await db.schema.createIndex('memory_leases_created').on('memory_leases').columns(['created_at', 'id']).execute();
}
