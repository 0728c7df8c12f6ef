// Hosts that flap: the times a host was declared failed lately and since when it is quarantined (status),
// when an admin last lifted a quarantine (spec), and the command that powers the host off (spec).
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  const add = (name: string) => db.schema.alterTable('hosts').addColumn(name, 'text').execute();
  await add('recent_failures');
  await add('quarantined_at');
  await add('quarantine_lifted_at');
  await add('power_fence');
}
