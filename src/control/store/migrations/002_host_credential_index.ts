// Agents authenticate by their credential's hash on every connect: index it.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('hosts_credential_hash').unique().on('hosts').column('credential_hash').execute();
}
