// A VM row is two halves with one writer each. Spec (the API's): what the user wants, now including a
// memory target, a reboot request and a migration request. Status (the controllers'): what is, now with
// the one operation in flight and which requests were handled. Every write of either half bumps
// `resource_version` and checks the one it read, so no decision is taken on a row that changed meanwhile.
import type { Kysely } from 'kysely';

export async function up(db: Kysely<any>): Promise<void> {
  const add = (name: string, type: 'integer' | 'text', build: (c: any) => any = (c) => c) =>
    db.schema.alterTable('vms').addColumn(name, type, build).execute();
  await add('resource_version', 'integer', (c) => c.notNull().defaultTo(1));
  // spec
  await add('memory_target_mib', 'integer');
  await add('reboot_request', 'integer', (c) => c.notNull().defaultTo(0));
  await add('migrate_request', 'text');
  // status
  await add('op', 'text');
  await add('reboot_handled', 'integer', (c) => c.notNull().defaultTo(0));
  await add('migrate_handled', 'text');
  await add('memory_applied_mib', 'integer');
}
