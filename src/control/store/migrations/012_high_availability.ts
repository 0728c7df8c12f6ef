// High availability: each placement of a VM gets a fencing token that only grows, HA VMs get a restart
// priority (spec) and restart bookkeeping (status), and a host records since when it is failed.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  const add = (table: string, name: string, type: 'integer' | 'text', def?: number) =>
    db.schema.alterTable(table).addColumn(name, type, (c) => (def === undefined ? c : c.notNull().defaultTo(def))).execute();
  await add('vms', 'placement_token', 'integer', 0);
  await add('vms', 'ha_priority', 'integer', 0);
  await add('vms', 'ha_restarts', 'text');
  await add('hosts', 'failed_at', 'text');
  await add('hosts', 'state_reason', 'text');
}
