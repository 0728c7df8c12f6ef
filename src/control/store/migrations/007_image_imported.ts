// Images remember whether their file is a copy control made in the pool: only such a copy is deleted with them.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('images').addColumn('imported', 'integer', (c) => c.notNull().defaultTo(0)).execute();
}
