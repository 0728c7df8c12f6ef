// The schema migrations, run by Kysely's Migrator (see ../db.ts). They only move forward: a new migration is
// a new file `NNN_what_it_does.ts` exporting `up(db, dialect)`, and one line below naming it. The key is the
// migration's name as recorded in `kysely_migration`; it is never renamed once released.
//
// Numbers are handed out before the work lands, so migrations may be merged (and run on a database that
// follows main) out of number order; each runs once whatever the order (allowUnorderedMigrations), so a
// migration must not depend on one with a higher number.
import type { Kysely } from 'kysely';

export type Dialect = 'sqlite' | 'postgres';

export interface MigrationModule {
  up(db: Kysely<any>, dialect: Dialect): Promise<void>;
}

export const migrations: Record<string, () => Promise<MigrationModule>> = {
  '001_initial': () => import('./001_initial.ts'),
  '002_host_credential_index': () => import('./002_host_credential_index.ts'),
  '003_image_ready_text': () => import('./003_image_ready_text.ts'),
  '004_vm_local_disk': () => import('./004_vm_local_disk.ts'),
  '005_unique_names_and_active_tasks': () => import('./005_unique_names_and_active_tasks.ts'),
  '006_token_expiry': () => import('./006_token_expiry.ts'),
  '007_image_imported': () => import('./007_image_imported.ts'),
  '008_vm_spec_status': () => import('./008_vm_spec_status.ts'),
  '009_pools_and_volumes': () => import('./009_pools_and_volumes.ts'),
  '010_control_leader': () => import('./010_control_leader.ts'),
  '011_host_status': () => import('./011_host_status.ts'),
  '012_high_availability': () => import('./012_high_availability.ts'),
  '013_host_flaps_and_power_fence': () => import('./013_host_flaps_and_power_fence.ts'),
  '014_replicated_volumes': () => import('./014_replicated_volumes.ts'),
  '015_memory_leases': () => import('./015_memory_leases.ts'),
  '016_host_powered_off': () => import('./016_host_powered_off.ts'),
};

/**
 * The last migration the hand-written runner of earlier releases applied, recording it by number in
 * `awan_migrations`. Migrations up to this one are adopted from that table once (see ../db.ts); later
 * ones never look at it.
 */
export const LAST_LEGACY_VERSION = 7;

/** A migration's number, from its name (`005_unique_names…` → 5). */
export function migrationVersion(name: string): number {
  const m = /^(\d{3})_[a-z0-9_]+$/.exec(name);
  if (!m) throw new Error(`migration name ${name} is not NNN_lower_case_words`);
  return Number(m[1]);
}
