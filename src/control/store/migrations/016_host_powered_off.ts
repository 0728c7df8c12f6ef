// The failure (its `failed_at`) for which a host's power fence switched it off: a new leader then neither
// runs the command again nor waits the lease margin for that failure.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('hosts').addColumn('power_fenced_for', 'text').execute();
}
