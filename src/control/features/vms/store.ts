// Every SQL statement about VMs. A row has two halves with one writer each: the API writes spec (what the
// user wants; `generation` counts its changes), controllers write status (what is). Both writes are a
// compare-and-set on `resource_version`, which every write bumps: a writer that read an older row loses,
// re-reads and decides again, so no decision is ever committed on a row that changed under it.
import type { Kysely } from 'kysely';
import type { Database, VmRow } from '../../store/schema.ts';

export const specColumns = [
  'name', 'cpus', 'memory_mib', 'max_memory_mib', 'image_id', 'disk_gib', 'local_disk', 'replicated', 'ha', 'placement_labels',
  'anti_affinity', 'nics', 'desired_power', 'deleting', 'memory_target_mib', 'reboot_request', 'migrate_request',
  'ha_priority',
] as const;
export const statusColumns = [
  'phase', 'host_id', 'target_host_id', 'message', 'memory_actual_mib', 'observed_generation', 'op', 'reboot_handled',
  'migrate_handled', 'memory_applied_mib', 'placement_token', 'ha_restarts',
] as const;

export type VmSpecPatch = Partial<Pick<VmRow, (typeof specColumns)[number]>>;
export type VmStatusPatch = Partial<Pick<VmRow, (typeof statusColumns)[number]>>;

/** The migration a user asked for: the scheduler picks the host when `targetHostId` is null. */
export interface MigrateRequest {
  id: string;
  targetHostId: string | null;
}

export const migrateRequestOf = (vm: VmRow): MigrateRequest | null => (vm.migrate_request ? (JSON.parse(vm.migrate_request) as MigrateRequest) : null);

/** A migration asked for and not yet settled. */
export function pendingMigration(vm: VmRow): MigrateRequest | null {
  const req = migrateRequestOf(vm);
  return req && req.id !== vm.migrate_handled ? req : null;
}

export type VmStore = ReturnType<typeof createVmStore>;

export function createVmStore(db: Kysely<Database>) {
  const only = <T extends object>(patch: T, allowed: readonly string[]): T => {
    const stray = Object.keys(patch).filter((k) => !allowed.includes(k));
    // A writer touching the other half's columns is a bug, not a race: fail loudly.
    if (stray.length) throw new Error(`not ${allowed === specColumns ? 'spec' : 'status'} columns: ${stray.join(', ')}`);
    return patch;
  };

  return {
    get: (id: string, trx: Kysely<Database> = db) => trx.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst(),

    /** By id or name; an id wins over a name that reads the same. */
    async find(idOrName: string): Promise<VmRow | undefined> {
      const rows = await db.selectFrom('vms').selectAll().where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).execute();
      return rows.find((r) => r.id === idOrName) ?? rows[0];
    },

    list(q: { limit: number; after?: { at: string; id: string }; hostId?: string; phase?: string; name?: string }): Promise<VmRow[]> {
      let query = db.selectFrom('vms').selectAll().orderBy('created_at').orderBy('id').limit(q.limit + 1);
      const c = q.after;
      if (c) query = query.where((eb) => eb.or([eb('created_at', '>', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '>', c.id)])]));
      if (q.hostId) query = query.where('host_id', '=', q.hostId);
      if (q.phase) query = query.where('phase', '=', q.phase);
      if (q.name) query = query.where('name', 'like', `%${q.name.replace(/[%_\\]/g, '')}%`);
      return query.execute();
    },

    ids: async () => (await db.selectFrom('vms').select('id').execute()).map((r) => r.id),

    /** VMs placed on, or moving to, a host. */
    onHost: async (hostId: string) =>
      (await db.selectFrom('vms').select('id').where((eb) => eb.or([eb('host_id', '=', hostId), eb('target_host_id', '=', hostId)])).execute()).map((r) => r.id),

    placed: () => db.selectFrom('vms').selectAll().where('host_id', 'is not', null).execute(),

    /** Memory held on a host by the VMs placed there (and arriving there). */
    async allocatedMiB(hostId: string): Promise<number> {
      const r = await db.selectFrom('vms').select((eb) => eb.fn.sum<number>('memory_mib').as('mib'))
        .where((eb) => eb.or([eb('host_id', '=', hostId), eb('target_host_id', '=', hostId)]))
        .where('phase', 'not in', ['stopped', 'failed'])
        .executeTakeFirst();
      return Number(r?.mib ?? 0);
    },

    countByPhase: () => db.selectFrom('vms').select(['phase', db.fn.countAll<number>().as('n')]).groupBy('phase').execute(),

    insert: (row: VmRow, trx: Kysely<Database>) => trx.insertInto('vms').values(row).execute(),

    /** The API's write: a new generation of the spec, if nobody wrote the row since `vm` was read. */
    writeSpec(vm: VmRow, patch: VmSpecPatch, trx: Kysely<Database> = db): Promise<VmRow | undefined> {
      return trx
        .updateTable('vms')
        .set({ ...only(patch, specColumns), generation: vm.generation + 1, resource_version: vm.resource_version + 1, updated_at: new Date().toISOString() })
        .where('id', '=', vm.id)
        .where('resource_version', '=', vm.resource_version)
        .returningAll()
        .executeTakeFirst();
    },

    /** A controller's write: status only, if nobody wrote the row since `vm` was read. */
    writeStatus(vm: VmRow, patch: VmStatusPatch, trx: Kysely<Database> = db): Promise<VmRow | undefined> {
      return trx
        .updateTable('vms')
        .set({ ...only(patch, statusColumns), resource_version: vm.resource_version + 1, updated_at: new Date().toISOString() })
        .where('id', '=', vm.id)
        .where('resource_version', '=', vm.resource_version)
        .returningAll()
        .executeTakeFirst();
    },

    /** The controller's last step of a delete. */
    remove: (vm: VmRow) => db.deleteFrom('vms').where('id', '=', vm.id).where('resource_version', '=', vm.resource_version).executeTakeFirst(),
  };
}

/** The columns a new VM starts with that no request has set yet. */
export const untouched = {
  memory_target_mib: null, reboot_request: 0, migrate_request: null, op: null, reboot_handled: 0, migrate_handled: null,
  memory_applied_mib: null, resource_version: 1, placement_token: 0, ha_restarts: null,
} satisfies Partial<VmRow>;
