// Where a VM on replicated storage may restart when its host fails: on the host of its disk's copy, and
// only if that copy was in step (every write the guest saw acknowledged is there). The copy then becomes
// the disk, and the failed host's disk a leftover to delete once it is back.
import type { Kysely } from 'kysely';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { PoolService } from '../features/pools/service.ts';
import { noReplica } from '../features/volumes/service.ts';
import type { ChangeFeed } from '../reconcile/changes.ts';
import type { Database, VmRow, VolumeRow } from '../store/schema.ts';
import type { Leftovers } from './leftovers.ts';
import { usable } from './replicator.ts';

/** Restart there; wait (the copy's host is away for now); or do not restart (the copy is not in step). */
export type FailoverHost = { hostId: string } | { wait: string } | { fail: string };

export type ReplicaFailover = ReturnType<typeof createReplicaFailover>;

/** Whether a disk's copy holds every write of the VM's current run (its placement token), and its state said so. */
export function copyInStep(v: Pick<VolumeRow, 'replica_state' | 'replica_token'>, vm: Pick<VmRow, 'placement_token'>): { inStep: boolean; state: string } {
  const inStep = v.replica_state === 'synced' && v.replica_token === vm.placement_token;
  return { inStep, state: inStep ? 'synced' : v.replica_state === 'synced' ? 'not yet in step since the VM last started' : (v.replica_state ?? 'placing') };
}

export function createReplicaFailover(deps: { db: Kysely<Database>; registry: HostRegistry; pools: PoolService; events: EventService; changes: ChangeFeed; leftovers: Leftovers }) {
  const { db, registry, pools } = deps;
  const name = (hostId: string) => registry.get(hostId)?.row.name ?? hostId;
  const volumeOf = (vmId: string) => db.selectFrom('volumes').selectAll().where('vm_id', '=', vmId).where('replicated', '=', 1).where('deleting', '=', 0).executeTakeFirst();

  return {
    /** For a replicated VM of a failed host: where it restarts. Undefined for a VM not on replicated storage. */
    async hostFor(vm: VmRow): Promise<FailoverHost | undefined> {
      if (!vm.replicated) return undefined;
      const v = await volumeOf(vm.id);
      if (!v) return { fail: 'its replicated disk is not recorded yet' };
      const pool = await db.selectFrom('pools').select('host_id').where('id', '=', v.pool_id).executeTakeFirst();
      // Promoted already by an earlier pass that did not get to write the VM.
      if (pool?.host_id && pool.host_id !== vm.host_id) return { hostId: pool.host_id };
      if (!v.replica_host_id) return { fail: `its disk had no copy on another host (${v.replica_message ?? 'none was made yet'})` };
      const where = name(v.replica_host_id);
      // In step during the VM's last run (its placement token), not only during an earlier one.
      const copy = copyInStep(v, vm);
      if (!copy.inStep) return { fail: `the copy of its disk on ${where} was ${copy.state}, so the latest writes are only on the failed host` };
      const host = registry.get(v.replica_host_id);
      if (usable(host)) return { hostId: v.replica_host_id };
      return { wait: `the copy of its disk is on ${where}, which is ${host?.row.maintenance ? 'in maintenance' : (host?.row.state ?? 'gone')}` };
    },

    /** Where the copy of a replicated VM's disk is, and whether it holds every write of the VM's current run. */
    async copyOf(vm: VmRow): Promise<{ hostId: string; inStep: boolean; state: string } | { none: string } | undefined> {
      if (!vm.replicated) return undefined;
      const v = await volumeOf(vm.id);
      if (!v?.replica_host_id) return { none: v?.replica_message ?? 'none was made yet' };
      return { hostId: v.replica_host_id, ...copyInStep(v, vm) };
    },

    /**
     * The copy on `hostId` becomes the VM's disk: its volume moves to that host's local pool with no copy
     * (the replicator makes a new one), and the old host's disk is a leftover. Done before a failed host's VM
     * is placed there, so the start names the right disk; for a live migration, as the source lets go.
     */
    async promote(vm: VmRow, hostId: string): Promise<void> {
      const v = await volumeOf(vm.id);
      const pool = await pools.localPoolOf(hostId);
      if (!v || !pool || v.pool_id === pool.id) return;
      // Deleted by its host once that is up (a live migration's source deletes it as it lets go, too).
      if (vm.host_id) await deps.leftovers.add(vm.host_id, v.name);
      await deps.leftovers.forget(hostId, v.name);
      const now = new Date().toISOString();
      await db.updateTable('volumes').set({ pool_id: pool.id, ...noReplica, replica_changed_at: now, updated_at: now }).where('id', '=', v.id).execute();
      deps.changes.publish({ kind: 'volume', id: v.id });
      await deps.events.emit({
        type: 'volume.replica.promoted', objectKind: 'volume', objectId: v.id,
        message: `the copy of ${v.name} on ${name(hostId)} is now the disk of VM ${vm.name}; the disk on ${name(vm.host_id ?? '')} no longer counts`,
        data: { vmId: vm.id, from: vm.host_id, to: hostId },
      });
    },
  };
}
