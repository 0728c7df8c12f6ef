// Kernel images may name the console text that proves their guest booted.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('images').addColumn('ready_text', 'text').execute();
}
