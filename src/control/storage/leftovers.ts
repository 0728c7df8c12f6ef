// Copies of replicated volumes that no longer count: a copy given up because its host failed, the disk a
// failed host held before its VM restarted from the copy elsewhere. Each is deleted from its host's local
// pool once that host is back and ready, unless the volume has since come to live there again.
import type { Kysely } from 'kysely';
import type { Logger } from '../../lib/logger.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { PoolService } from '../features/pools/service.ts';
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { Database } from '../store/schema.ts';

const COMMAND_TIMEOUT_MS = 60_000;
const RETRY_MS = 5000;

export type Leftovers = ReturnType<typeof createLeftovers>;

export function createLeftovers({ db, registry, pools, log }: { db: Kysely<Database>; registry: HostRegistry; pools: PoolService; log: Logger }) {
  /** Whether the volume named `name` lives on the host now (its disk or its copy): then it is no leftover. */
  async function inUse(hostId: string, name: string, localPoolId: string): Promise<boolean> {
    const row = await db.selectFrom('volumes').select('id').where('name', '=', name).where('deleting', '=', 0)
      .where((eb) => eb.or([eb('pool_id', '=', localPoolId), eb('replica_host_id', '=', hostId)])).executeTakeFirst();
    return !!row;
  }

  return {
    /** Queue keys of the replicator that are leftovers of a host, not volumes. */
    KEY: 'leftovers:',

    async add(hostId: string, name: string): Promise<void> {
      await db.insertInto('volume_leftovers').values({ host_id: hostId, name, created_at: new Date().toISOString() })
        .onConflict((oc) => oc.columns(['host_id', 'name']).doNothing()).execute();
    },

    async forget(hostId: string, name: string): Promise<void> {
      await db.deleteFrom('volume_leftovers').where('host_id', '=', hostId).where('name', '=', name).execute();
    },

    hosts: async () => (await db.selectFrom('volume_leftovers').select('host_id').distinct().execute()).map((r) => r.host_id),

    list: (hostId: string) => db.selectFrom('volume_leftovers').selectAll().where('host_id', '=', hostId).execute(),

    async reconcile(hostId: string): Promise<ReconcileResult> {
      const rows = await db.selectFrom('volume_leftovers').select('name').where('host_id', '=', hostId).execute();
      if (rows.length === 0) return;
      const host = registry.get(hostId);
      const pool = await pools.localPoolOf(hostId);
      if (!host?.connection || host.row.state !== 'ready' || !pool) return; // its return queues this again
      for (const { name } of rows) {
        if (!(await inUse(hostId, name, pool.id))) {
          try {
            await host.connection.command({ op: 'replicaUnexport', pool: { type: 'local', path: pool.path }, name, delete: true }, { timeoutMs: COMMAND_TIMEOUT_MS });
          } catch (err) {
            log.warn({ hostId, name, err: err instanceof Error ? err.message : String(err) }, 'could not delete an old copy');
            return { requeueAfterMs: RETRY_MS };
          }
          log.info({ hostId, host: host.row.name, name }, 'old copy deleted');
        }
        await db.deleteFrom('volume_leftovers').where('host_id', '=', hostId).where('name', '=', name).execute();
      }
      return;
    },
  };
}
