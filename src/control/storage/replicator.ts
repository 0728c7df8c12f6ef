// The storage replicator, a controller beside the others: keeps a synchronous copy of every replicated
// volume on a second host. A pass takes one step and returns: choose the copy's host, have that host serve
// the copy (replicaExport), have the VM's QEMU mirror into it (replicaAttach), then record the state the
// VM's host reports (rebuilding → synced, or degraded). A copy whose host failed is given up and built
// again on a third host. Copies that no longer count are deleted from their hosts once those are back
// (leftovers.ts). The HA manager asks `failoverHost` where a replicated VM may restart (failover.ts).
import type { Kysely } from 'kysely';
import type { Logger } from '../../lib/logger.ts';
import type { Command, ReplicaStatusMsg, ReplicaTargetMsg } from '../../protocol/messages.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry, LiveHost } from '../features/hosts/registry.ts';
import type { PoolService } from '../features/pools/service.ts';
import type { ChangeFeed } from '../reconcile/changes.ts';
import type { Controller, RunningController } from '../reconcile/manager.ts';
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { Database, ReplicaState, VolumeRow } from '../store/schema.ts';
import { type Leftovers, createLeftovers } from './leftovers.ts';

const COMMAND_TIMEOUT_MS = 60_000;
const WAIT_MS = 2000;
/** The replicated disk is the VM's first (the only one a VM has today). */
const DISK = 0;

export interface ReplicatorDeps {
  db: Kysely<Database>;
  registry: HostRegistry;
  pools: PoolService;
  events: EventService;
  changes: ChangeFeed;
  log: Logger;
  resyncMs?: number;
}

type ReplicaPatch = Partial<Pick<VolumeRow, 'replica_host_id' | 'replica_state' | 'replica_message' | 'replica_target' | 'replica_token'>>;

export const usable = (h: LiveHost | undefined): boolean => !!h?.connection && h.row.state === 'ready' && h.row.maintenance === 0;
/** A copy's host that will not serve it again soon: the copy is built elsewhere. */
const lost = (h: LiveHost | undefined) => !h || h.row.state === 'failed' || h.row.state === 'fenced';

export type Replicator = ReturnType<typeof createReplicator>;

export function createReplicator(deps: ReplicatorDeps) {
  const { db, registry, pools, events, log } = deps;
  const leftovers: Leftovers = createLeftovers(deps);
  /** Replicated volumes by VM, so a VM's report queues its volume. */
  const byVm = new Map<string, string>();
  /** Volumes with a command out, so a pass in between does not send a second one. */
  const inflight = new Set<string>();
  const failures = new Map<string, number>();
  let handle: RunningController | undefined;
  const touched = (id: string) => deps.changes.publish({ kind: 'volume', id });

  /** Writes the copy's status; a state change is stamped, and said in an event. */
  async function write(v: VolumeRow, patch: ReplicaPatch, why?: string): Promise<boolean> {
    const now = new Date().toISOString();
    const stateChanged = 'replica_state' in patch && patch.replica_state !== v.replica_state;
    const row = await db.updateTable('volumes')
      .set({ ...patch, ...(stateChanged ? { replica_changed_at: now } : {}), updated_at: now })
      .where('id', '=', v.id).where('generation', '=', v.generation)
      .where((eb) => (v.replica_host_id === null ? eb('replica_host_id', 'is', null) : eb('replica_host_id', '=', v.replica_host_id)))
      .returning('id').executeTakeFirst();
    if (!row) return false;
    touched(v.id);
    if (stateChanged && patch.replica_state) {
      const host = registry.get(patch.replica_host_id ?? v.replica_host_id ?? '')?.row.name ?? patch.replica_host_id ?? v.replica_host_id;
      await events.emit({
        type: `volume.replica.${patch.replica_state}`, objectKind: 'volume', objectId: v.id,
        message: `the copy of ${v.name} on ${host} is ${patch.replica_state}${why ? `: ${why}` : ''}`,
        data: { vmId: v.vm_id, hostId: patch.replica_host_id ?? v.replica_host_id },
      });
    }
    return true;
  }

  /** Gives the copy up (its host is lost, or the volume goes): it becomes a leftover of that host. */
  async function dropReplica(v: VolumeRow, why: string): Promise<void> {
    if (!v.replica_host_id) return;
    await leftovers.add(v.replica_host_id, v.name);
    if (await write(v, { replica_host_id: null, replica_state: null, replica_target: null, replica_message: why })) {
      await events.emit({
        type: 'volume.replica.dropped', objectKind: 'volume', objectId: v.id,
        message: `the copy of ${v.name} on ${registry.get(v.replica_host_id)?.row.name ?? v.replica_host_id} no longer counts: ${why}`,
        data: { vmId: v.vm_id, hostId: v.replica_host_id },
      });
    }
  }

  /** The ready host, other than the primary's, holding the fewest copies, whose local pool has room. */
  async function chooseHost(v: VolumeRow, primary: string): Promise<string | undefined> {
    const counts = new Map((await db.selectFrom('volumes').select(['replica_host_id', (eb) => eb.fn.countAll<number>().as('n')])
      .where('replica_host_id', 'is not', null).groupBy('replica_host_id').execute()).map((r) => [r.replica_host_id!, Number(r.n)]));
    const sizeMiB = v.actual_size_mib ?? v.size_mib;
    const fits: { id: string; n: number }[] = [];
    for (const h of registry.all()) {
      if (h.row.id === primary || !usable(h)) continue;
      const pool = await pools.localPoolOf(h.row.id);
      if (!pool || (pool.free_mib !== null && pool.free_mib < sizeMiB)) continue;
      fits.push({ id: h.row.id, n: counts.get(h.row.id) ?? 0 });
    }
    return fits.sort((a, b) => a.n - b.n || a.id.localeCompare(b.id))[0]?.id;
  }

  /** Sends one command for a volume; its answer (or refusal) is written, then the volume queued again. */
  function send<T>(v: VolumeRow, host: LiveHost, command: Command, done: (value: T) => Promise<void>, refused: (err: CommandError | Error) => Promise<void>): void {
    inflight.add(v.id);
    host.connection!.command<T>(command, { timeoutMs: COMMAND_TIMEOUT_MS })
      .then(async (value) => {
        failures.delete(v.id);
        await done(value);
      }, async (err: unknown) => {
        const e = err instanceof Error ? err : new Error(String(err));
        if (!(e instanceof CommandError && e.code === 'HOST_DISCONNECTED')) failures.set(v.id, (failures.get(v.id) ?? 0) + 1);
        log.warn({ volumeId: v.id, op: command.op, host: host.row.name, err: e.message }, 'replica step failed');
        await refused(e);
      })
      .catch((err: unknown) => log.error({ err, volumeId: v.id }, 'could not record a replica step'))
      .finally(() => {
        inflight.delete(v.id);
        const n = failures.get(v.id) ?? 0;
        if (n === 0) handle?.enqueue(v.id);
        else handle?.enqueueAfter(v.id, Math.min(500 * 2 ** (n - 1), 30_000));
      });
  }

  async function reconcile(id: string): Promise<ReconcileResult> {
    if (id.startsWith(leftovers.KEY)) return leftovers.reconcile(id.slice(leftovers.KEY.length));
    if (inflight.has(id)) return; // its answer queues the next pass
    let v = await db.selectFrom('volumes').selectAll().where('id', '=', id).executeTakeFirst();
    if (!v?.replicated) {
      for (const [vmId, volumeId] of byVm) if (volumeId === id) byVm.delete(vmId);
      return;
    }
    if (v.vm_id) byVm.set(v.vm_id, v.id);
    if (v.deleting) return dropReplica(v, 'the volume is deleted');
    const vm = v.vm_id ? await db.selectFrom('vms').select(['id', 'host_id', 'name']).where('id', '=', v.vm_id).executeTakeFirst() : undefined;
    const pool = await db.selectFrom('pools').select(['host_id']).where('id', '=', v.pool_id).executeTakeFirst();
    const primary = pool?.host_id;
    // The VM moved (HA restarted it on its copy's host) and its volume not yet with it: the next pass.
    if (!vm?.host_id || !primary || vm.host_id !== primary) return { requeueAfterMs: WAIT_MS };
    if (v.replica_host_id === primary) {
      // The copy became the disk (a failover): a new copy is made elsewhere.
      await write(v, { replica_host_id: null, replica_state: null, replica_target: null, replica_message: null });
      return { requeueAfterMs: 0 };
    }
    const replicaHost = v.replica_host_id ? registry.get(v.replica_host_id) : undefined;
    if (v.replica_host_id && lost(replicaHost)) {
      await dropReplica(v, `host ${replicaHost?.row.name ?? v.replica_host_id} is ${replicaHost?.row.state ?? 'gone'}`);
      return { requeueAfterMs: 0 };
    }
    const primaryHost = registry.get(primary);
    const observed = primaryHost?.connection ? primaryHost.vms.get(v.vm_id!) : undefined;
    // Copies are made of a running VM's disk (its QEMU mirrors it); a stopped VM mirrors again at boot.
    if (!primaryHost?.connection || observed?.state !== 'running') return;
    if (!v.replica_host_id) return place(v, primary);
    const target = v.replica_target ? (JSON.parse(v.replica_target) as ReplicaTargetMsg) : undefined;
    const seen = observed.replicas?.find((r) => r.disk === DISK);
    const ours = !!seen && !!target && sameTarget(seen.target, target);
    // What the VM's QEMU says of the copy is recorded before anything else: HA trusts a copy only while it
    // is known in step, so a copy that stopped must never be left looking synced.
    if (ours) v = await record(v, seen!, observed.token ?? null);
    if (replicaHost?.row.maintenance && (await chooseHost(v, primary))) {
      // Its host is being emptied for maintenance: the copy is built again on a host that stays. Until that
      // one is in step the disk has no copy to fail over to; without another host the copy stays where it is.
      await dropReplica(v, `host ${replicaHost.row.name} is in maintenance`);
      return { requeueAfterMs: 0 };
    }
    if (!replicaHost || !usable(replicaHost)) return { requeueAfterMs: WAIT_MS }; // away for now: its copy resumes when it is back
    if (!target) return serve(v, replicaHost);
    if (!ours || seen!.state === 'degraded') return attach(v, primaryHost, target);
    return;
  }

  async function place(v: VolumeRow, primary: string): Promise<ReconcileResult> {
    if (v.actual_size_mib === null) return { requeueAfterMs: WAIT_MS }; // its size is known once the volume is made
    const hostId = await chooseHost(v, primary);
    if (!hostId) {
      const why = 'no second ready host has room for a copy; the disk has none until one has';
      if (v.replica_message !== why) await write(v, { replica_message: why });
      return { requeueAfterMs: 5000 };
    }
    await leftovers.forget(hostId, v.name); // an old copy there is overwritten by the new one
    await write(v, { replica_host_id: hostId, replica_state: 'placing', replica_target: null, replica_message: null }, 'a host is chosen');
    return { requeueAfterMs: 0 };
  }

  function serve(v: VolumeRow, host: LiveHost): ReconcileResult {
    void (async () => {
      const pool = await pools.localPoolOf(host.row.id);
      if (!pool) return;
      send<{ replica: ReplicaTargetMsg }>(v, host, {
        op: 'replicaExport', pool: { type: 'local', path: pool.path }, name: v.name, format: v.format, sizeMiB: v.actual_size_mib ?? v.size_mib,
      }, async (r) => {
        // Nothing is in step with a new server until the VM's QEMU says so.
        await write(v, { replica_target: JSON.stringify(r.replica), replica_state: 'placing', replica_token: null, replica_message: null }, `served by ${host.row.name}`);
      }, async (err) => {
        await write(v, { replica_message: `serving the copy on ${host.row.name} failed: ${err.message}` });
      });
    })().catch((err: unknown) => log.error({ err, volumeId: v.id }, 'could not serve a copy'));
    return;
  }

  /** The VM's QEMU mirrors into the copy (again, in full, after it degraded). */
  function attach(v: VolumeRow, primary: LiveHost, target: ReplicaTargetMsg): ReconcileResult {
    send(v, primary, { op: 'replicaAttach', vmId: v.vm_id!, disk: DISK, target }, async () => undefined, async (err) => {
      // The copy's server may be gone (its host rebooted): serve it again, then attach.
      await write(v, { replica_target: null, replica_state: 'degraded', replica_token: null, replica_message: `mirroring into the copy failed: ${err.message}` });
    });
    return;
  }

  /** The copy's state as the VM's host reported it, for the VM's current placement (`token`). */
  async function record(v: VolumeRow, seen: ReplicaStatusMsg, token: number | null): Promise<VolumeRow> {
    const state: ReplicaState = seen.state;
    const message = state === 'rebuilding' && seen.totalBytes
      ? `copied ${Math.floor(((seen.copiedBytes ?? 0) / seen.totalBytes) * 100)} %`
      : (seen.reason ?? null);
    if (v.replica_state === state && v.replica_message === message && v.replica_token === token) return v;
    const patch = { replica_state: state, replica_message: message, replica_token: token };
    return (await write(v, patch, seen.reason)) ? { ...v, ...patch } : v;
  }

  const controller: Controller = {
    name: 'replicator',
    watches: ['volume', 'vm', 'host'],
    keysFor: (c) => {
      if (c.kind === 'volume') return [c.id];
      if (c.kind === 'vm') return byVm.has(c.id) ? [byVm.get(c.id)!] : [];
      return [...new Set(byVm.values()), leftovers.KEY + c.id];
    },
    reconcile,
    listKeys: async () => {
      const rows = await db.selectFrom('volumes').select(['id', 'vm_id']).where('replicated', '=', 1).execute();
      for (const r of rows) if (r.vm_id) byVm.set(r.vm_id, r.id);
      return [...rows.map((r) => r.id), ...(await leftovers.hosts()).map((h) => leftovers.KEY + h)];
    },
    resyncMs: deps.resyncMs ?? 5000,
    concurrency: 8,
  };
  return {
    controller,
    leftovers,
    attach(h: RunningController): void {
      handle = h;
    },
  };
}

const sameTarget = (a: ReplicaTargetMsg, b: ReplicaTargetMsg) => a.host === b.host && a.port === b.port && a.exportName === b.exportName;
