// API tokens made when they could live forever get the default lifetime, counted from this upgrade, so no
// token stays valid for good while scripts that use one keep working for now.
import type { Kysely } from 'kysely';

const API_TOKEN_DEFAULT_DAYS = 90;

export async function up(db: Kysely<any>): Promise<void> {
  const expiresAt = new Date(Date.now() + API_TOKEN_DEFAULT_DAYS * 86400_000).toISOString();
  await db.updateTable('api_tokens').set({ expires_at: expiresAt }).where('expires_at', 'is', null).execute();
}
