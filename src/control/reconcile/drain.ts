// The drain controller: carries out the drain a host's spec asks for (`drain_task_id`, maintenance on).
// Each pass looks at the VMs still on the host, asks the VM service to move one away (migrate a running
// VM, stop one that is not running) when none of its moves is under way, and returns; the move's task
// finishing (a 'task' note) or the VM changing queues the next pass. The drain's task succeeds once the
// host is empty, and fails with each reason once every VM left has been tried and could not move.
import type { Logger } from '../../lib/logger.ts';
import { AppError } from '../errors.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { HostStore } from '../features/hosts/store.ts';
import type { Task, TaskService } from '../features/tasks/service.ts';
import { isFinished } from '../features/tasks/service.ts';
import type { Vm } from '../features/vms/model.ts';
import type { Controller } from './manager.ts';
import type { ReconcileResult } from './queue.ts';

export interface DrainDeps {
  store: HostStore;
  registry: HostRegistry;
  tasks: TaskService;
  log: Logger;
  /** The VMs a host holds now (every page). */
  vmsOn: (hostId: string) => Promise<Vm[]>;
  /** The VM service's own requests: they write the VM's spec, the VM controller does the rest. */
  migrate: (vmId: string, by: string | null) => Promise<{ task: Task }>;
  stop: (vmId: string, by: string | null) => Promise<{ task: Task }>;
  /** Moves in flight at once per drain. */
  parallel?: number;
  /** How long a drain waits for its host to come back when it turns unreachable, before it fails. */
  hostAwayMs?: number;
  resyncMs?: number;
}

/** What this process asked for during one drain: a VM's move task, or why it could not be moved. */
type Attempt = { taskId: string } | { failed: string };

const waiting = new Set(['pending', 'scheduling', 'starting', 'stopping', 'migrating', 'deleting']);

export function createDrainController(deps: DrainDeps): Controller {
  const { store, registry, tasks, log } = deps;
  /** By drain task id; a restart forgets it, so a VM that could not move is tried once more. */
  const attempts = new Map<string, Map<string, Attempt>>();
  /** Which drain (host id) waits on a VM or on a move's task: the notes that should wake it. */
  const byVm = new Map<string, string>();
  const byTask = new Map<string, string>();
  /** Since when a drain's host has not been ready, by drain task id. */
  const awaySince = new Map<string, number>();

  function forget(drainTaskId: string): void {
    const mine = attempts.get(drainTaskId);
    attempts.delete(drainTaskId);
    awaySince.delete(drainTaskId);
    for (const [vmId, a] of mine ?? []) {
      byVm.delete(vmId);
      if ('taskId' in a) byTask.delete(a.taskId);
    }
  }

  async function finish(task: Task, outcome: 'succeeded' | 'failed' | 'cancelled', code: string, message: string): Promise<void> {
    if (outcome === 'succeeded') await tasks.succeed(task.id, message);
    else if (outcome === 'cancelled') await tasks.cancelled(task.id, message);
    else await tasks.fail(task.id, code, message);
    forget(task.id);
  }

  /** Asks for one VM's move; an immediate refusal (no room, wrong phase) is the reason it cannot move. */
  async function move(vm: Vm, task: Task, mine: Map<string, Attempt>, hostId: string): Promise<void> {
    try {
      if (vm.phase === 'stopped') throw new AppError('UNSUPPORTED', `it is stopped and its disk stays on this host`);
      const child = vm.phase === 'running' ? await deps.migrate(vm.id, task.createdBy) : await deps.stop(vm.id, task.createdBy);
      mine.set(vm.id, { taskId: child.task.id });
      byTask.set(child.task.id, hostId);
      log.info({ hostId, vmId: vm.id, taskId: child.task.id, kind: child.task.kind }, 'drain moves a VM');
    } catch (err) {
      mine.set(vm.id, { failed: err instanceof Error ? err.message : String(err) });
    }
  }

  async function reconcile(hostId: string): Promise<ReconcileResult> {
    const row = await store.get(hostId);
    if (!row?.drain_task_id) return;
    const task = await tasks.get(row.drain_task_id).catch(() => undefined);
    if (!task || isFinished(task.state)) {
      if (task) forget(task.id);
      return;
    }
    if (row.maintenance === 0) return finish(task, 'cancelled', 'CANCELLED', `host ${row.name} was activated before the drain finished`);
    const live = registry.get(hostId);
    if (row.state !== 'ready') {
      // Its VMs cannot move while the host is away; it may be back soon (an agent restarting). Its
      // return is a host note; the deadline bounds the wait.
      const since = awaySince.get(task.id) ?? Date.now();
      awaySince.set(task.id, since);
      const waitMs = deps.hostAwayMs ?? 60_000;
      if (row.state === 'fenced' || Date.now() - since >= waitMs) {
        return finish(task, 'failed', 'HOST_NOT_READY', `host ${row.name} is ${row.state}; its VMs cannot be moved away`);
      }
      return { requeueAfterMs: waitMs - (Date.now() - since) };
    }
    awaySince.delete(task.id);
    // Just after this process took the lead, agents are still reconnecting: moves now would fail for that.
    if (!live?.connection || registry.settling()) return { requeueAfterMs: 250 };

    const mine = attempts.get(task.id) ?? new Map<string, Attempt>();
    attempts.set(task.id, mine);
    const vms = await deps.vmsOn(hostId);
    const total = Math.max(Number(task.params?.vmCount ?? 0), vms.length, 1);
    await tasks.progress(task.id, ((total - vms.length) / total) * 100, `${vms.length} VMs left on ${row.name}`);
    if (vms.length === 0) return finish(task, 'succeeded', 'OK', `host ${row.name} is empty and in maintenance`);

    const failures: string[] = [];
    const ready: Vm[] = [];
    let inFlight = 0;
    for (const vm of vms) {
      byVm.set(vm.id, hostId);
      const active = await tasks.activeFor(vm.id);
      if (active.length) {
        // Its own move, or someone else's work on it: either way it settles first.
        inFlight++;
        for (const t of active) byTask.set(t.id, hostId);
        continue;
      }
      const a = mine.get(vm.id);
      if (a && 'failed' in a) failures.push(`${vm.name}: ${a.failed}`);
      else if (a) {
        const child = await tasks.get(a.taskId).catch(() => undefined);
        failures.push(`${vm.name}: ${child?.error?.message ?? `still on ${row.name} after its ${child?.kind ?? 'move'} (${child?.state ?? 'gone'})`}`);
      } else if (waiting.has(vm.phase)) inFlight++;
      else ready.push(vm);
    }
    const room = (deps.parallel ?? 1) - inFlight;
    for (const vm of ready.slice(0, Math.max(0, room))) {
      await move(vm, task, mine, hostId);
      const a = mine.get(vm.id)!;
      if ('failed' in a) failures.push(`${vm.name}: ${a.failed}`);
      else inFlight++;
    }
    if (inFlight > 0 || ready.length > Math.max(0, room)) {
      // A VM that could not move is reported once the others are done; a VM left waiting in a transient
      // phase without a task is looked at again by the resync.
      return ready.length > Math.max(0, room) && inFlight === 0 ? { requeueAfterMs: 0 } : undefined;
    }
    return finish(task, 'failed', 'DRAIN_INCOMPLETE', `${failures.length} VMs could not be moved: ${failures.join('; ')}`);
  }

  return {
    name: 'drain',
    watches: ['host', 'vm', 'task'],
    keysFor: (c) => {
      if (c.kind === 'host') return [c.id];
      const hostId = c.kind === 'vm' ? byVm.get(c.id) : byTask.get(c.id);
      return hostId ? [hostId] : [];
    },
    reconcile,
    listKeys: () => store.draining(),
    resyncMs: deps.resyncMs ?? 5000,
    concurrency: 4,
  };
}
