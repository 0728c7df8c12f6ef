// The VM reconciler: compares what the API asked for (power state, host, deletion, migration target) with
// what the agents report, and takes one idempotent step toward agreement per pass.
import type { Kysely } from 'kysely';
import type { Logger } from '../../lib/logger.ts';
import type { VmSpecMsg, VmStatusMsg } from '../../protocol/messages.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { Task, TaskService } from '../features/tasks/service.ts';
import { IllegalPhaseChange, type VmPhase, canTransition } from '../features/vms/model.ts';
import type { CapacityIndex, PlacementPolicy } from '../scheduler/capacity-index.ts';
import type { Database, VmRow, VmUpdate } from '../store/schema.ts';
import type { Controller } from './manager.ts';
import type { ReconcileResult } from './queue.ts';
import { migrateVm, recoverMigration } from './vm-migration.ts';

export interface VmControllerDeps {
  db: Kysely<Database>;
  tasks: TaskService;
  events: EventService;
  registry: HostRegistry;
  capacity: CapacityIndex;
  log: Logger;
  buildSpec: (vm: VmRow) => Promise<VmSpecMsg>;
  /** Deletes a deleted VM's disks from the pool. */
  removeVolumes: (vmId: string) => Promise<void>;
  policy?: PlacementPolicy;
  /** How long a host may take to answer a start; see START_TIMEOUT_MS. */
  startTimeoutMs?: number;
  resyncMs?: number;
}

export type VmController = ReturnType<typeof createVmController>;

/**
 * Longer than a QEMU host's own boot wait (120 s) plus the accelerator probe it runs when a guest did not boot
 * under KVM (up to 2 × 15 s): the host's answer says what went wrong, a timeout here would not.
 */
const START_TIMEOUT_MS = 180_000;

export function createVmController(deps: VmControllerDeps) {
  const { db, tasks, events, registry, capacity, log } = deps;
  /** VMs whose migration this process is driving right now. */
  const migrating = new Set<string>();
  /** Running operations that can be cancelled, by task id. */
  const cancels = new Map<string, AbortController>();
  /** Tasks older than this process were started by an earlier one. */
  const bootAt = new Date().toISOString();

  async function update(vm: VmRow, patch: VmUpdate, why?: string): Promise<VmRow> {
    const next = patch.phase as VmPhase | undefined;
    if (next && !canTransition(vm.phase as VmPhase, next)) {
      // Going on as if it happened would leave the VM and its task in a state nobody chose: stop here,
      // say so in the log and on the VM's task, and let the error back the reconcile pass off.
      const err = new IllegalPhaseChange(vm.id, vm.phase, next);
      log.error({ vmId: vm.id, from: vm.phase, to: next, why }, 'illegal phase change');
      for (const t of await tasks.activeFor(vm.id)) await tasks.fail(t.id, 'ILLEGAL_PHASE_CHANGE', `VM ${vm.name}: ${vm.phase} -> ${next} is not a phase change awan makes; this is a bug, please report it`);
      throw err;
    }
    const row = await db
      .updateTable('vms')
      .set({ ...patch, updated_at: new Date().toISOString() })
      .where('id', '=', vm.id)
      .where('generation', '=', vm.generation)
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new Error(`VM ${vm.id} changed while it was reconciled; retrying`);
    if (next && next !== vm.phase) {
      await events.emit({
        type: `vm.${next}`,
        objectKind: 'vm',
        objectId: vm.id,
        message: `VM ${vm.name} is ${next}${why ? `: ${why}` : ''}`,
        data: { from: vm.phase, to: next, hostId: row.host_id },
      });
    }
    return row;
  }

  const finishTasks = async (active: Task[], kinds: string[], message: string, result?: Record<string, unknown>) => {
    for (const t of active) if (kinds.includes(t.kind)) await tasks.succeed(t.id, message, result);
  };
  const failTasks = async (active: Task[], kinds: string[], code: string, message: string) => {
    for (const t of active) if (kinds.includes(t.kind)) await tasks.fail(t.id, code, message);
  };

  async function reconcile(vmId: string): Promise<ReconcileResult> {
    let vm = await db.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirst();
    if (!vm) {
      capacity.release(vmId);
      await reportStrangers(vmId);
      return;
    }
    const active = await tasks.activeFor(vmId);
    const host = vm.host_id ? registry.get(vm.host_id) : undefined;
    const observed = host?.vms.get(vm.id);
    const connected = !!host?.connection;

    if (vm.deleting) return reconcileDelete(vm, active);

    if (vm.target_host_id) {
      if (migrating.has(vm.id)) return;
      const migrateTask = active.find((t) => t.kind === 'migrate');
      if (!migrateTask || migrateTask.createdAt < bootAt) return recoverMigration(ctx, vm, active);
      migrating.add(vm.id);
      const abort = new AbortController();
      cancels.set(migrateTask.id, abort);
      try {
        await migrateVm(ctx, vm, migrateTask, abort.signal);
      } finally {
        migrating.delete(vm.id);
        cancels.delete(migrateTask.id);
      }
      return { requeueAfterMs: 0 };
    }

    // A VM runs where a host says it runs: if another host reports it live (a migration whose end control
    // did not see), record that instead of ever starting a second copy.
    const live = liveElsewhere(vm);
    if (live) {
      await update(vm, { host_id: live.row.id, message: `found running on ${live.row.name}` }, `found on ${live.row.name}`);
      capacity.assign(vm.id, live.row.id, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
      return { requeueAfterMs: 0 };
    }

    if (vm.host_id && !connected) {
      // Not connected but not yet declared unreachable (control just restarted, or the agent is
      // reconnecting): wait for it rather than give up on its VMs.
      if (host && (host.row.state === 'ready' || host.row.state === 'joining')) return { requeueAfterMs: 250 };
      // The host is silent: we cannot know what runs there. Say so, and wait for it to return.
      if (vm.phase !== 'unknown' && vm.phase !== 'stopped' && vm.phase !== 'failed') {
        vm = await update(vm, { phase: 'unknown', message: `host ${host?.row.name ?? vm.host_id} is unreachable` });
      }
      await failTasks(active, ['create', 'start', 'stop'], 'HOST_NOT_READY', `host ${host?.row.name ?? vm.host_id} is unreachable`);
      return;
    }

    if (vm.desired_power === 'running') {
      if (!vm.host_id) return schedule(vm, active);
      if (observed?.state === 'running') return recordRunning(vm, observed, active);
      // A crash reported before this start was asked for (a local VM keeps its host) is history, not news.
      if (observed?.state === 'crashed' && vm.phase !== 'pending') {
        // Whether it died running or while booting, it is not restarted by itself; the stop path clears it.
        const reason = observed.reason ?? 'the VM process ended unexpectedly';
        await update(vm, { phase: 'failed', desired_power: 'stopped', message: reason, generation: vm.generation + 1 }, reason);
        await failTasks(active, ['create', 'start'], 'BOOT_FAILED', reason);
        return { requeueAfterMs: 0 };
      }
      return startOnHost(vm, active);
    }

    // Desired: stopped.
    if (vm.host_id && observed && ['running', 'starting', 'paused'].includes(observed.state)) {
      const stopTask = active.find((t) => t.kind === 'stop');
      const force = stopTask?.params?.force === true;
      // Clearing up after a failure (a boot that timed out) keeps the VM failed with its reason; a stop
      // the user asked for is a stop like any other.
      if (vm.phase !== 'failed' || stopTask) vm = await update(vm, { phase: 'stopping' });
      try {
        await host!.connection!.command({ op: 'stop', vmId: vm.id, force, timeoutMs: 30_000 }, { timeoutMs: 60_000 });
      } catch (err) {
        if (err instanceof CommandError && err.code === 'HOST_DISCONNECTED') return { requeueAfterMs: 0 };
        // The user still wants it stopped: say why it is not, and try again with backoff.
        const message = err instanceof Error ? err.message : String(err);
        await update(vm, { message: `stop failed: ${message}; retrying` });
        await failTasks(active, ['stop'], 'STOP_FAILED', message);
        throw err;
      }
      return { requeueAfterMs: 0 };
    }
    // A stopped VM on the shared pool belongs to no host: its next start is placed afresh, so the old host
    // forgets it. One whose disk lives on its host stays there, disk and all.
    const keepHost = vm.local_disk === 1 && vm.host_id !== null;
    if (vm.host_id && observed && !keepHost) await forget(vm.host_id, vm.id);
    const hostId = keepHost ? vm.host_id : null;
    if (vm.phase !== 'stopped' || vm.host_id !== hostId || vm.observed_generation !== vm.generation) {
      const stayFailed = vm.phase === 'failed' && !active.some((t) => t.kind === 'stop');
      vm = await update(vm, { phase: stayFailed ? 'failed' : 'stopped', host_id: hostId, observed_generation: vm.generation, memory_actual_mib: null });
    }
    capacity.release(vm.id);
    await finishTasks(active, ['stop', 'create'], 'stopped');
  }

  /** A host runs a VM control does not know: say so once, and leave it alone (it may be someone's). */
  const reported = new Set<string>();
  async function reportStrangers(vmId: string): Promise<void> {
    for (const h of registry.all()) {
      const vm = h.vms.get(vmId);
      const key = `${h.row.id}/${vmId}`;
      if (!vm || vm.state === 'incoming' || reported.has(key)) continue;
      reported.add(key);
      log.warn({ hostId: h.row.id, vmId }, 'host runs a VM control does not know');
      await events.emit({
        type: 'host.unknown-vm',
        objectKind: 'host',
        objectId: h.row.id,
        message: `host ${h.row.name} runs VM ${vm.name} (${vmId}), which control does not know; it is left running`,
        data: { vmId, name: vm.name, state: vm.state },
      });
    }
  }

  async function recordRunning(vm: VmRow, observed: VmStatusMsg, active: Task[]): Promise<void> {
    const hostId = vm.host_id!;
    if (vm.phase !== 'running' || vm.observed_generation !== vm.generation || vm.memory_actual_mib !== observed.memoryActualMiB) {
      vm = await update(vm, { phase: 'running', message: null, observed_generation: vm.generation, memory_actual_mib: observed.memoryActualMiB });
    }
    capacity.assign(vm.id, hostId, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
    await finishTasks(active, ['create', 'start'], `running on ${registry.get(hostId)?.row.name ?? hostId}`, { hostId });
  }

  async function schedule(vm: VmRow, active: Task[]): Promise<ReconcileResult> {
    // Placement is one in-memory step, so the VM goes from pending to starting in a single write.
    const placement = capacity.place(
      { memoryMiB: vm.memory_mib, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>, antiAffinity: vm.anti_affinity },
      deps.policy ?? 'spread',
    );
    if (!placement.ok) {
      await update(vm, { phase: 'failed', desired_power: 'stopped', generation: vm.generation + 1, message: placement.reason }, placement.reason);
      await failTasks(active, ['create', 'start'], 'NO_CAPACITY', placement.reason);
      return;
    }
    // Reserve first so a parallel placement sees the space as taken; the row write below is the commit.
    capacity.assign(vm.id, placement.hostId, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
    try {
      vm = await update(vm, { phase: 'starting', host_id: placement.hostId, message: null });
    } catch (err) {
      capacity.release(vm.id);
      throw err;
    }
    const host = registry.get(placement.hostId);
    for (const t of active) await tasks.progress(t.id, 30, `placed on ${host?.row.name ?? placement.hostId}`);
    return host?.connection ? startOnHost(vm, active) : { requeueAfterMs: 250 };
  }

  async function startOnHost(vm: VmRow, active: Task[]): Promise<ReconcileResult> {
    const host = registry.get(vm.host_id!)!;
    if (vm.phase !== 'starting') vm = await update(vm, { phase: 'starting' });
    for (const t of active) await tasks.progress(t.id, 50, `starting on ${host.row.name}`);
    try {
      const spec = await deps.buildSpec(vm);
      await host.connection!.command({ op: 'start', spec }, { timeoutMs: deps.startTimeoutMs ?? START_TIMEOUT_MS });
    } catch (err) {
      const code = err instanceof CommandError ? err.code : 'START_FAILED';
      const message = err instanceof Error ? err.message : String(err);
      if (code === 'HOST_DISCONNECTED') return { requeueAfterMs: 0 }; // the disconnect path takes over
      // The host may still be booting it (a timeout): keep the host, and let the stop path stop and forget it.
      await update(vm, { phase: 'failed', desired_power: 'stopped', generation: vm.generation + 1, message }, message);
      await failTasks(active, ['create', 'start'], code, `could not start on ${host.row.name}: ${message}`);
      return { requeueAfterMs: 0 };
    }
    // The agent reported the VM's state before its answer, so it is usually known to run by now.
    const seen = host.vms.get(vm.id);
    if (seen?.state === 'running') return recordRunning(vm, seen, active);
    return { requeueAfterMs: 5000 };
  }

  function liveElsewhere(vm: VmRow) {
    for (const h of registry.all()) {
      if (h.row.id === vm.host_id || !h.connection) continue;
      const seen = h.vms.get(vm.id);
      if (seen && (seen.state === 'running' || seen.state === 'paused')) return h;
    }
    return undefined;
  }

  /** Tells a host to drop its definition of a VM that no longer runs there. */
  async function forget(hostId: string, vmId: string): Promise<void> {
    const host = registry.get(hostId);
    if (!host?.connection || !host.vms.has(vmId)) return;
    await host.connection.command({ op: 'delete', vmId }, { timeoutMs: 60_000 });
    host.vms.delete(vmId);
  }

  async function reconcileDelete(vm: VmRow, active: Task[]): Promise<ReconcileResult> {
    if (vm.phase !== 'deleting') vm = await update(vm, { phase: 'deleting' });
    const host = vm.host_id ? registry.get(vm.host_id) : undefined;
    if (host && host.vms.has(vm.id)) {
      if (!host.connection) {
        if (host.row.state === 'ready' || host.row.state === 'joining') return { requeueAfterMs: 2000 };
        // The host is gone: the VM cannot be cleared there now. Keep it, and say so.
        const why = `host ${host.row.name} is ${host.row.state}; delete the VM again once it is back`;
        await update(vm, { deleting: 0, phase: 'unknown', generation: vm.generation + 1, message: why });
        await failTasks(active, ['delete'], 'HOST_NOT_READY', why);
        return;
      }
      await forget(host.row.id, vm.id);
    }
    // Other hosts may keep a stopped trace of it (a migration that did not arrive): clear those too.
    for (const other of registry.all()) {
      if (other !== host && other.vms.has(vm.id)) await forget(other.row.id, vm.id).catch(() => undefined);
    }
    await deps.removeVolumes(vm.id);
    await db.deleteFrom('vms').where('id', '=', vm.id).execute();
    capacity.release(vm.id);
    await events.emit({ type: 'vm.deleted', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} deleted` });
    await finishTasks(active, ['delete'], 'deleted');
    await failTasks(active, ['create', 'start', 'stop', 'migrate', 'reboot'], 'VM_DELETED', 'the VM was deleted');
  }

  const ctx = { db, tasks, events, registry, capacity, log, update, buildSpec: deps.buildSpec };

  const controller: Controller = {
    name: 'vms',
    watches: ['vm'],
    reconcile,
    concurrency: 64,
    resyncMs: deps.resyncMs,
    listKeys: async () => (await db.selectFrom('vms').select('id').execute()).map((r) => r.id),
  };

  return {
    controller,
    /** Cancels a running migration; false when the task is not one this process can cancel. */
    cancel(taskId: string): boolean {
      const abort = cancels.get(taskId);
      abort?.abort();
      return !!abort;
    },
  };
}

/** What the migration steps share with the reconciler. */
export type VmControllerContext = Pick<VmControllerDeps, 'db' | 'tasks' | 'events' | 'registry' | 'capacity' | 'log' | 'buildSpec'> & {
  update: (vm: VmRow, patch: VmUpdate, why?: string) => Promise<VmRow>;
};
