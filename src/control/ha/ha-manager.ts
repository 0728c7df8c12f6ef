// The HA manager, a controller beside the others. A host whose lease ran out is failed (the host registry
// decides that); once a margin has passed beyond the lease too, the host's HA VMs have stopped themselves
// (its agent or its watchdog did), so they are restarted on other hosts: highest priority first, each
// placed within capacity and anti-affinity before the next (a VM on replicated storage on its disk's copy's
// host), at most a few times an hour per VM. Non-HA VMs of the host are failed with the reason and stay
// where they are, in case it comes back. A host with a power fence is powered off first, and its VMs need
// not wait for the margin once that worked. Restarts of one VM back off (restart-backoff.ts); a quarantined
// host (it flaps) runs no HA VMs: those it reports stopped are restarted elsewhere at once.
import { Histogram } from 'prom-client';
import type { Logger } from '../../lib/logger.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { VmStore } from '../features/vms/store.ts';
import type { Metrics } from '../metrics.ts';
import type { ChangeFeed } from '../reconcile/changes.ts';
import type { Controller } from '../reconcile/manager.ts';
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { CapacityIndex, PlacementPolicy } from '../scheduler/capacity-index.ts';
import type { ReplicaFailover } from '../storage/failover.ts';
import type { VmRow } from '../store/schema.ts';
import { PowerFencer } from './power-fence.ts';
import { type RestartBackoff, defaultRestartBackoff, nextRestartAtMs } from './restart-backoff.ts';

export interface HaDeps {
  registry: HostRegistry;
  store: VmStore;
  changes: ChangeFeed;
  capacity: CapacityIndex;
  events: EventService;
  metrics: Metrics;
  log: Logger;
  policy?: PlacementPolicy;
  /** Where VMs on replicated storage may restart (their disk's copy), and making that copy their disk. */
  replicas?: ReplicaFailover;
  /** Waited beyond a failed host's lease before its VMs restart elsewhere. */
  marginMs?: number;
  /** Restarts of one VM within `restartWindowMs` before HA gives up on it. */
  maxRestarts?: number;
  restartWindowMs?: number;
  /** The wait between restarts of one VM. */
  backoff?: RestartBackoff;
}

const HOST = 'host:';
const VM = 'vm:';
const UP = ['running', 'starting', 'paused', 'incoming'];

export function createHaManager(deps: HaDeps): Controller {
  const { registry, store, capacity, events, log } = deps;
  const marginMs = deps.marginMs ?? 1500;
  const maxRestarts = deps.maxRestarts ?? 3;
  const windowMs = deps.restartWindowMs ?? 3600_000;
  const backoff = deps.backoff ?? defaultRestartBackoff;
  const fencer = new PowerFencer({ events, changes: deps.changes, log, poweredOff: (id, at) => registry.notePoweredOff(id, at) });
  /** VMs restarted by this process and not yet seen running: when their host failed and when HA acted. */
  const restarting = new Map<string, { failedAtMs: number; releasedAtMs: number; from: string }>();

  const seconds = (name: string, help: string) =>
    new Histogram({ name, help, buckets: [0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120], registers: [deps.metrics.registry] });
  const detection = seconds('awan_ha_detection_seconds', 'From the last heartbeat of a host to it being declared failed');
  const fencing = seconds('awan_ha_fencing_seconds', 'From a host being declared failed to its HA VMs being released for a restart (lease expiry plus margin)');
  const restart = seconds('awan_ha_restart_seconds', 'From an HA VM being released for a restart to it running on another host');

  /** A status write the VM controller hears of (it starts the VM where HA placed it). */
  async function writeStatus(vm: VmRow, patch: Parameters<VmStore['writeStatus']>[1]): Promise<VmRow | undefined> {
    const row = await store.writeStatus(vm, patch);
    if (row) deps.changes.publish({ kind: 'vm', id: vm.id });
    return row;
  }

  /** The VMs meant to run on a host, HA ones first by priority. */
  async function vmsOn(hostId: string): Promise<{ ha: VmRow[]; other: VmRow[] }> {
    const vms = (await Promise.all((await store.onHost(hostId)).map((id) => store.get(id)))).filter(
      (v): v is VmRow => !!v && v.host_id === hostId && v.desired_power === 'running' && !v.deleting && !v.target_host_id,
    );
    const ha = vms.filter((v) => v.ha === 1).sort((a, b) => b.ha_priority - a.ha_priority || a.created_at.localeCompare(b.created_at));
    return { ha, other: vms.filter((v) => v.ha !== 1) };
  }

  /** Restarts each VM elsewhere in turn; the next pass is due when the soonest one that had to wait is. */
  async function restartAll(ha: VmRow[], cause: string, failedAtMs: number): Promise<number | undefined> {
    let next: number | undefined;
    for (const vm of ha) {
      const wait = await restartElsewhere(vm, cause, failedAtMs);
      if (wait !== undefined) next = Math.min(next ?? wait, wait);
    }
    return next;
  }

  /** A quarantined host runs no HA VMs: those it reports not running (it fenced them when it failed) go elsewhere. */
  async function reconcileQuarantined(hostId: string): Promise<ReconcileResult> {
    const host = registry.get(hostId);
    if (!host?.connection) return; // it fails again (lease) or reconnects: either queues a pass
    const stopped = (await vmsOn(hostId)).ha.filter((v) => !UP.includes(host.vms.get(v.id)?.state ?? 'stopped'));
    const wait = await restartAll(stopped, `host ${host.row.name} is quarantined`, Date.now());
    return wait === undefined ? undefined : { requeueAfterMs: wait };
  }

  async function reconcileHost(hostId: string): Promise<ReconcileResult> {
    const host = registry.get(hostId);
    if (host?.row.state === 'quarantined') return reconcileQuarantined(hostId);
    if (!host || host.row.state !== 'failed') return;
    const { ha, other } = await vmsOn(hostId);
    // Powered off, the host runs nothing: no margin is needed beyond its lease. Running or failed: wait for it.
    const fence = ha.length ? fencer.state(host.row) : 'none';
    const wait = host.leaseExpiresMs + (fence === 'off' ? 0 : marginMs) - Date.now();
    if (wait > 0) return { requeueAfterMs: wait };
    const failedAtMs = host.row.failed_at ? Date.parse(host.row.failed_at) : Date.now();
    const next = await restartAll(ha, `host ${host.row.name} failed`, failedAtMs);
    for (const vm of other.filter((v) => v.phase !== 'failed')) {
      const message = `host ${host.row.name} failed (${host.row.state_reason ?? 'its lease ran out'}); the VM is not HA, so it stays there until the host is back`;
      await writeStatus(vm, { phase: 'failed', op: null, message });
      await events.emit({ type: 'vm.failed', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name}: ${message}` });
    }
    return next === undefined ? undefined : { requeueAfterMs: next };
  }

  /**
   * Places one HA VM on another host and hands it to the VM controller. Returns when to try again if it
   * must wait (for its backoff, for room), nothing when it is done with the VM.
   */
  async function restartElsewhere(vm: VmRow, cause: string, failedAtMs: number): Promise<number | undefined> {
    const now = Date.now();
    const recent = (vm.ha_restarts ? (JSON.parse(vm.ha_restarts) as string[]) : []).filter((t) => now - Date.parse(t) < windowMs);
    if (recent.length >= maxRestarts) {
      if (vm.phase === 'failed') return;
      const message = `${cause}; HA restarted the VM ${recent.length} times within ${Math.round(windowMs / 60_000)} minutes and does not again`;
      await writeStatus(vm, { phase: 'failed', op: null, message });
      await events.emit({ type: 'vm.ha.gave-up', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name}: ${message}` });
      return;
    }
    const nextAt = nextRestartAtMs(recent.map(Date.parse), backoff);
    if (nextAt > now) {
      const message = `${cause}; HA restarted the VM ${recent.length} ${recent.length === 1 ? 'time' : 'times'} lately and restarts it next at ${new Date(nextAt).toISOString()}`;
      if (vm.message !== message) await writeStatus(vm, { message });
      return nextAt - now;
    }
    // A VM on replicated storage can only restart where its disk's copy is, and only from a copy in step.
    const pinned = await deps.replicas?.hostFor(vm);
    if (pinned && 'fail' in pinned) {
      if (vm.phase === 'failed') return;
      const message = `${cause} and the VM cannot restart elsewhere: ${pinned.fail}; it starts again when the host is back`;
      await writeStatus(vm, { phase: 'failed', op: null, message });
      await events.emit({ type: 'vm.failed', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name}: ${message}` });
      return;
    }
    if (pinned && 'wait' in pinned) {
      const message = `${cause}; waiting to restart the VM: ${pinned.wait}`;
      if (vm.message !== message) await writeStatus(vm, { message });
      return 5000;
    }
    const others = pinned ? registry.all().map((h) => h.row.id).filter((id) => id !== pinned.hostId) : [];
    const placement = capacity.place({
      memoryMiB: vm.memory_mib, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>,
      antiAffinity: vm.anti_affinity, exclude: [vm.host_id!, ...others],
    }, deps.policy ?? 'spread');
    if (!placement.ok) {
      // Tried again as capacity frees up.
      const message = `${cause}; waiting for room to restart the VM: ${placement.reason}`;
      if (vm.message !== message) await writeStatus(vm, { message });
      return 5000;
    }
    capacity.assign(vm.id, placement.hostId, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
    if (pinned) await deps.replicas!.promote(vm, placement.hostId);
    const to = registry.get(placement.hostId)?.row.name ?? placement.hostId;
    const row = await writeStatus(vm, {
      host_id: placement.hostId, phase: 'pending', op: null, message: `restarting on ${to}: ${cause}`,
      memory_actual_mib: null, memory_applied_mib: null, ha_restarts: JSON.stringify([...recent, new Date(now).toISOString()]),
    });
    if (!row) {
      capacity.release(vm.id);
      return 0; // changed meanwhile: the next pass decides again
    }
    const heardAt = registry.get(vm.host_id!)?.heardAtMs;
    if (heardAt) detection.observe(Math.max(0, failedAtMs - heardAt) / 1000);
    fencing.observe(Math.max(0, now - failedAtMs) / 1000);
    const from = registry.get(vm.host_id!)?.row.name ?? vm.host_id!;
    restarting.set(vm.id, { failedAtMs, releasedAtMs: now, from });
    log.warn({ vmId: vm.id, from, to }, 'HA restarts a VM of a failed host');
    await events.emit({
      type: 'vm.ha.restarting', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} restarts on ${to}: ${cause}`,
      data: { from: vm.host_id, to: placement.hostId, detectedAt: new Date(failedAtMs).toISOString(), priority: vm.ha_priority },
    });
  }

  async function reconcileVm(vmId: string): Promise<ReconcileResult> {
    const r = restarting.get(vmId);
    if (!r) return;
    const vm = await store.get(vmId);
    if (!vm || vm.desired_power !== 'running' || vm.deleting) {
      restarting.delete(vmId);
      return;
    }
    if (vm.phase !== 'running') return;
    restarting.delete(vmId);
    const s = (Date.now() - r.releasedAtMs) / 1000;
    restart.observe(s);
    await events.emit({
      type: 'vm.ha.restarted', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} runs again on ${registry.get(vm.host_id ?? '')?.row.name ?? vm.host_id} after host ${r.from} failed`,
      data: { restartSeconds: s, sinceFailureSeconds: (Date.now() - r.failedAtMs) / 1000 },
    });
  }

  return {
    name: 'ha',
    watches: ['host', 'vm'],
    keysFor: (c) => (c.kind === 'host' ? [HOST + c.id] : restarting.has(c.id) ? [VM + c.id] : []),
    reconcile: (key) => (key.startsWith(HOST) ? reconcileHost(key.slice(HOST.length)) : reconcileVm(key.slice(VM.length))),
    listKeys: async () => [...registry.all().filter((h) => h.row.state === 'failed' || h.row.state === 'quarantined').map((h) => HOST + h.row.id), ...[...restarting.keys()].map((id) => VM + id)],
    resyncMs: 1000,
    concurrency: 4,
    stop: () => fencer.stop(),
  };
}
