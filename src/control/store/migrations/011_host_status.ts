// Hosts get a status side that only control's host machinery writes (compare-and-set on status_version,
// fenced by the leader's epoch) beside the spec the API writes (generation), and a drain request in spec.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  const add = (name: string, type: 'integer' | 'text', def?: number) =>
    db.schema.alterTable('hosts').addColumn(name, type, (c) => (def === undefined ? c : c.notNull().defaultTo(def))).execute();
  await add('drain_task_id', 'text');
  await add('connected', 'integer', 0);
  await add('lease_expires_at', 'text');
  await add('vm_count', 'integer', 0);
  await add('memory_allocated_mib', 'integer', 0);
  await add('status_version', 'integer', 1);
  await add('status_epoch', 'integer', 0);
}
