// The VM controller: compares a VM's spec (power, deletion, memory target, reboot and migration requests)
// with what its host reports, and takes one step toward agreement per pass. A step sends at most one
// command and records it in the VM's status (vm-op.ts); the agent's answer or report queues the next pass.
// It writes status only, by compare-and-set: a pass that read a row someone changed since starts over.
import type { Kysely } from 'kysely';
import { newId } from '../../lib/ids.ts';
import type { Logger } from '../../lib/logger.ts';
import type { VmSpecMsg, VmStatusMsg } from '../../protocol/messages.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry, LiveHost } from '../features/hosts/registry.ts';
import type { Task, TaskService } from '../features/tasks/service.ts';
import { IllegalPhaseChange, type VmPhase, canTransition } from '../features/vms/model.ts';
import { type VmStatusPatch, type VmStore, pendingMigration } from '../features/vms/store.ts';
import type { CapacityIndex, PlacementPolicy } from '../scheduler/capacity-index.ts';
import type { Database, VmRow } from '../store/schema.ts';
import type { ChangeFeed } from './changes.ts';
import type { Controller } from './manager.ts';
import type { ReconcileResult } from './queue.ts';
import { createVmCommands } from './vm-commands.ts';
import type { ReplicaFailover } from '../storage/failover.ts';
import { advanceMigration, beginMigration, recoverMigration } from './vm-migration.ts';
import { type OpDraft, type VmOp, msLeft, opOf, opTimeoutMs, stamp } from './vm-op.ts';

export interface VmControllerDeps {
  db: Kysely<Database>;
  store: VmStore;
  tasks: TaskService;
  events: EventService;
  registry: HostRegistry;
  capacity: CapacityIndex;
  changes: ChangeFeed;
  log: Logger;
  buildSpec: (vm: VmRow) => Promise<VmSpecMsg>;
  /** Deletes a deleted VM's disks from the pool. */
  removeVolumes: (vmId: string) => Promise<void>;
  /** The copies of replicated disks, which a replicated VM live-migrates onto. */
  replicas?: ReplicaFailover;
  policy?: PlacementPolicy;
  resyncMs?: number;
}

export type VmController = ReturnType<typeof createVmController>;

/** Someone wrote the VM since this pass read it: the pass starts over on the new row. */
class StaleRow extends Error {}

const UP = ['running', 'starting', 'paused'];

export function createVmController(deps: VmControllerDeps) {
  const { store, tasks, events, registry, capacity, log } = deps;
  const commands = createVmCommands((vmId) => deps.changes.publish({ kind: 'vm', id: vmId }));

  async function write(vm: VmRow, patch: VmStatusPatch, why?: string): Promise<VmRow> {
    const next = patch.phase as VmPhase | undefined;
    if (next && !canTransition(vm.phase as VmPhase, next)) {
      // Going on as if it happened would leave the VM and its task in a state nobody chose: stop here,
      // say so in the log and on the VM's task, and let the error back the reconcile pass off.
      log.error({ vmId: vm.id, from: vm.phase, to: next, why }, 'illegal phase change');
      for (const t of await tasks.activeFor(vm.id)) await tasks.fail(t.id, 'ILLEGAL_PHASE_CHANGE', `VM ${vm.name}: ${vm.phase} -> ${next} is not a phase change awan makes; this is a bug, please report it`);
      throw new IllegalPhaseChange(vm.id, vm.phase, next);
    }
    const row = await store.writeStatus(vm, patch);
    if (!row) throw new StaleRow(`VM ${vm.id} changed while it was reconciled`);
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
  const hostName = (id: string | null) => (id ? (registry.get(id)?.row.name ?? id) : 'no host');
  const assign = (vm: VmRow, hostId: string) => capacity.assign(vm.id, hostId, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });

  /** Records `op` in status, then sends its command: a pass that dies between the two finds the op and resends. */
  async function send(vm: VmRow, host: LiveHost, op: OpDraft, command: Parameters<typeof commands.send>[2], timeoutMs: number, patch: VmStatusPatch = {}, opts: { onProgress?: (f: number) => void; why?: string } = {}): Promise<VmRow> {
    const commandId = newId();
    const full = { ...op, hostId: host.row.id, commandId, ...stamp(timeoutMs) } as VmOp;
    const row = await write(vm, { ...patch, op: JSON.stringify(full) }, opts.why);
    commands.send(vm.id, host, command, { id: commandId, timeoutMs, onProgress: opts.onProgress });
    return row;
  }

  const ctx = { store, tasks, events, registry, capacity, log, commands, write, send, assign, hostName, buildSpec: deps.buildSpec, policy: deps.policy, replicas: deps.replicas };

  async function reconcile(vmId: string): Promise<ReconcileResult> {
    try {
      return await pass(vmId);
    } catch (err) {
      if (err instanceof StaleRow) return { requeueAfterMs: 0 };
      throw err;
    }
  }

  async function pass(vmId: string): Promise<ReconcileResult> {
    let vm = await store.get(vmId);
    if (!vm) {
      capacity.release(vmId);
      await reportStrangers(vmId);
      return;
    }
    const active = await tasks.activeFor(vmId);
    const op = opOf(vm);
    if (op) return advance(vm, op, active);
    if (vm.deleting) return reconcileDelete(vm, active);
    // A destination recorded without an op: a migration whose outcome was lost. Settle where it runs.
    if (vm.target_host_id) return recoverMigration(ctx, vm, active);

    const host = vm.host_id ? registry.get(vm.host_id) : undefined;
    const observed = host?.vms.get(vm.id);

    // A VM runs where a host says it runs: if another host reports it live (a migration whose end control
    // did not see), record that instead of ever starting a second copy.
    const live = liveElsewhere(vm);
    if (live) {
      await write(vm, { host_id: live.row.id, message: `found running on ${live.row.name}` }, `found on ${live.row.name}`);
      assign(vm, live.row.id);
      return { requeueAfterMs: 0 };
    }

    if (vm.host_id && !host?.connection) {
      // Not connected but not yet declared unreachable (control just restarted, or the agent is
      // reconnecting): wait for it rather than give up on its VMs.
      if (host && (host.row.state === 'ready' || host.row.state === 'joining')) return { requeueAfterMs: 250 };
      // The host is silent: we cannot know what runs there. Say so, and wait for it to return. Requests
      // that can wait (a reboot, a memory target, a migration) stay in spec and happen once it is back.
      if (vm.phase !== 'unknown' && vm.phase !== 'stopped' && vm.phase !== 'failed') {
        vm = await write(vm, { phase: 'unknown', message: `host ${hostName(vm.host_id)} is unreachable` });
      }
      await failTasks(active, ['create', 'start', 'stop'], 'HOST_NOT_READY', `host ${hostName(vm.host_id)} is unreachable`);
      return;
    }

    if (vm.desired_power === 'running') {
      if (observed?.state === 'running') {
        vm = await recordRunning(vm, observed, active);
        return runningIntents(vm, host!, observed, active);
      }
      vm = await refuseWhileDown(vm, active);
      // This generation of the spec was tried and failed: wait for the user (a new start), clearing up what
      // the host may still run of it.
      if (vm.phase === 'failed' && vm.observed_generation === vm.generation) {
        if (host && observed && UP.includes(observed.state)) return stopOn(vm, host, active, true);
        return unplace(vm);
      }
      // A crash of this generation (while running, or while booting) is a failure, not a reason to restart.
      if (observed?.state === 'crashed' && vm.observed_generation === vm.generation) {
        const reason = observed.reason ?? 'the VM process ended unexpectedly';
        await write(vm, { phase: 'failed', message: reason }, reason);
        await failTasks(active, ['create', 'start'], 'BOOT_FAILED', reason);
        return { requeueAfterMs: 0 };
      }
      if (!vm.host_id) return schedule(vm, active);
      // An HA VM starts only on a ready host: one that just reconnected after it failed may be about to be
      // quarantined (it flaps), and a quarantined one is not trusted with it (the HA manager moves it).
      // The host's next state change queues a pass.
      if (vm.ha === 1 && host!.row.state !== 'ready') {
        const message = host!.row.state === 'quarantined'
          ? `host ${host!.row.name} is quarantined; HA restarts the VM on another host`
          : `waiting for host ${host!.row.name} to be ready (it is ${host!.row.state})`;
        if (vm.message !== message) await write(vm, { message });
        return;
      }
      return startOn(vm, host!, active);
    }

    // Desired: stopped.
    vm = await refuseWhileDown(vm, active);
    if (host && observed && UP.includes(observed.state)) return stopOn(vm, host, active, active.some((t) => t.kind === 'stop' && t.params?.force === true));
    const stayFailed = vm.phase === 'failed' && !active.some((t) => t.kind === 'stop');
    await unplace(vm, stayFailed ? 'failed' : 'stopped');
    await finishTasks(active, ['stop', 'create'], 'stopped');
  }

  /**
   * Nothing runs: a VM on the shared pool belongs to no host (its next start is placed afresh, so the old
   * host forgets it); one whose disk lives on its host stays there, disk and all.
   */
  async function unplace(vm: VmRow, phase: VmPhase = vm.phase as VmPhase): Promise<void> {
    const keepHost = vm.local_disk === 1 && vm.host_id !== null;
    if (vm.host_id && !keepHost) await forget(vm.host_id, vm.id);
    const hostId = keepHost ? vm.host_id : null;
    if (vm.phase !== phase || vm.host_id !== hostId || vm.observed_generation !== vm.generation || vm.memory_actual_mib !== null) {
      await write(vm, { phase, host_id: hostId, observed_generation: vm.generation, memory_actual_mib: null, memory_applied_mib: null });
    }
    capacity.release(vm.id);
  }

  /** Requests that need a running guest, made while it does not run: each is settled with the reason. */
  async function refuseWhileDown(vm: VmRow, active: Task[]): Promise<VmRow> {
    const migration = pendingMigration(vm);
    if (vm.reboot_request > vm.reboot_handled || migration) {
      vm = await write(vm, { reboot_handled: vm.reboot_request, ...(migration ? { migrate_handled: migration.id } : {}) });
    }
    await failTasks(active, ['reboot', 'migrate', 'set-memory'], 'VM_NOT_RUNNING', `VM ${vm.name} is not running`);
    return vm;
  }

  /** A running VM's requests, one at a time: a migration, then a reboot, then its memory target. */
  async function runningIntents(vm: VmRow, host: LiveHost, observed: VmStatusMsg, active: Task[]): Promise<ReconcileResult> {
    const migration = pendingMigration(vm);
    if (migration) return beginMigration(ctx, vm, migration, active);
    if (vm.reboot_request > vm.reboot_handled) {
      for (const t of active) if (t.kind === 'reboot') await tasks.progress(t.id, 50, `rebooting on ${host.row.name}`);
      await send(vm, host, { kind: 'reboot', request: vm.reboot_request }, { op: 'reboot', vmId: vm.id }, opTimeoutMs.reboot);
      return;
    }
    const target = vm.memory_target_mib;
    if (target !== null && vm.memory_applied_mib !== target) {
      for (const t of active) if (t.kind === 'set-memory') await tasks.progress(t.id, 30, `moving the balloon to ${target} MiB`);
      await send(vm, host, { kind: 'memory', targetMiB: target }, { op: 'setMemory', vmId: vm.id, targetMiB: target }, opTimeoutMs.memory);
      return;
    }
    // A target asked for again once it held: the guest says whether it still does.
    const memoryTask = active.find((t) => t.kind === 'set-memory');
    if (memoryTask && target !== null) await settleMemory(memoryTask, target, observed.memoryActualMiB);
  }

  async function settleMemory(task: Task, targetMiB: number, actualMiB: number | undefined): Promise<void> {
    if (actualMiB === targetMiB) await tasks.succeed(task.id, `memory is ${actualMiB} MiB`, { memoryActualMiB: actualMiB });
    else await tasks.fail(task.id, 'MEMORY_NOT_REACHED', `the guest holds ${actualMiB ?? 'an unknown amount of'} MiB, not the ${targetMiB} MiB asked`);
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

  async function recordRunning(vm: VmRow, observed: VmStatusMsg, active: Task[], also: VmStatusPatch = {}): Promise<VmRow> {
    const hostId = vm.host_id!;
    if (vm.phase !== 'running' || vm.observed_generation !== vm.generation || vm.memory_actual_mib !== observed.memoryActualMiB || vm.message !== null || 'op' in also) {
      vm = await write(vm, { ...also, phase: 'running', message: null, observed_generation: vm.generation, memory_actual_mib: observed.memoryActualMiB });
    }
    assign(vm, hostId);
    await finishTasks(active, ['create', 'start'], `running on ${hostName(hostId)}`, { hostId });
    return vm;
  }

  async function schedule(vm: VmRow, active: Task[]): Promise<ReconcileResult> {
    const placement = capacity.place(
      { memoryMiB: vm.memory_mib, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>, antiAffinity: vm.anti_affinity },
      deps.policy ?? 'spread',
    );
    if (!placement.ok) {
      await write(vm, { phase: 'failed', observed_generation: vm.generation, message: placement.reason }, placement.reason);
      await failTasks(active, ['create', 'start'], 'NO_CAPACITY', placement.reason);
      return;
    }
    // Reserve first so a parallel placement sees the space as taken; the status write is the commit.
    assign(vm, placement.hostId);
    const host = registry.get(placement.hostId)!;
    try {
      return await startOn(vm, host, active, placement.hostId);
    } catch (err) {
      capacity.release(vm.id);
      throw err;
    }
  }

  async function startOn(vm: VmRow, host: LiveHost, active: Task[], placedOn?: string): Promise<ReconcileResult> {
    if (!host.connection) return { requeueAfterMs: 250 };
    // A new placement: its token is higher than any copy elsewhere, which hosts then refuse or stop.
    const token = vm.placement_token + 1;
    const spec = { ...(await deps.buildSpec(vm)), token };
    for (const t of active) await tasks.progress(t.id, placedOn ? 30 : 50, `starting on ${host.row.name}`);
    await send(vm, host, { kind: 'start' }, { op: 'start', spec }, opTimeoutMs.start, {
      phase: 'starting', message: null, observed_generation: vm.generation, memory_applied_mib: null, placement_token: token,
      ...(placedOn ? { host_id: placedOn } : {}),
    });
  }

  async function stopOn(vm: VmRow, host: LiveHost, active: Task[], force: boolean): Promise<ReconcileResult> {
    // Clearing up after a failure keeps the VM failed with its reason; a stop the user asked for is a
    // stop like any other.
    // A VM being deleted stays `deleting` while it stops.
    const phase = vm.deleting ? vm.phase : vm.phase === 'failed' && !active.some((t) => t.kind === 'stop') ? 'failed' : 'stopping';
    await send(vm, host, { kind: 'stop', force }, { op: 'stop', vmId: vm.id, force, timeoutMs: 30_000, token: vm.placement_token }, opTimeoutMs.stop, { phase });
  }

  /** The VM has an op in flight: take its outcome, wait for it, or take it up again. */
  async function advance(vm: VmRow, op: VmOp, active: Task[]): Promise<ReconcileResult> {
    const host = registry.get(op.hostId);
    const outcome = commands.peek(op.commandId);
    const running = commands.running(op.commandId);
    const seen = host?.vms.get(vm.id);
    const clear = (patch: VmStatusPatch = {}, why?: string) => write(vm, { ...patch, op: null }, why);
    const lost = outcome && !outcome.ok && outcome.code === 'HOST_DISCONNECTED';

    switch (op.kind) {
      case 'start': {
        // A stop or delete asked while it boots: stop it now; the host abandons the boot.
        if (vm.desired_power !== 'running' || vm.deleting) {
          if (host?.connection && (running || (seen && UP.includes(seen.state)))) return stopOn(vm, host, active, true);
          await clear();
          return { requeueAfterMs: 0 };
        }
        if (seen?.state === 'running' || (outcome?.ok && host?.connection)) {
          const observed = seen?.state === 'running' ? seen : (outcome as { value: VmStatusMsg }).value;
          await recordRunning(vm, observed, active, { op: null });
          return { requeueAfterMs: 0 };
        }
        if (lost) {
          await clear();
          return { requeueAfterMs: 0 };
        }
        if (outcome && !outcome.ok) {
          await clear({ phase: 'failed', message: outcome.message }, outcome.message);
          await failTasks(active, ['create', 'start'], outcome.code, `could not start on ${hostName(op.hostId)}: ${outcome.message}`);
          return { requeueAfterMs: 0 };
        }
        if (running) return { requeueAfterMs: Math.max(1000, msLeft(op) + 1000) };
        // Sent by an earlier process: the host's report tells how far it got.
        if (msLeft(op) <= 0) {
          const why = `the VM did not run within ${opTimeoutMs.start / 1000} s`;
          await clear({ phase: 'failed', message: why }, why);
          await failTasks(active, ['create', 'start'], 'BOOT_TIMEOUT', why);
          return { requeueAfterMs: 0 };
        }
        if (seen?.state === 'starting') return { requeueAfterMs: Math.min(msLeft(op), 5000) };
        if (!host?.connection) return { requeueAfterMs: 250 };
        return startOn(vm, host, active); // starting what runs is a no-op on the host
      }

      case 'stop': {
        const down = !seen || !UP.includes(seen.state);
        if (down || outcome?.ok || lost) {
          await clear();
          return { requeueAfterMs: 0 };
        }
        if (outcome && !outcome.ok) {
          // The user still wants it stopped: say why it is not, and try again with backoff.
          await clear({ message: `stop failed: ${outcome.message}; retrying` });
          await failTasks(active, ['stop'], 'STOP_FAILED', outcome.message);
          throw new Error(`stop of VM ${vm.id} failed: ${outcome.message}`);
        }
        if (running) return { requeueAfterMs: Math.max(1000, msLeft(op) + 1000) };
        if (!host?.connection) return { requeueAfterMs: 250 };
        return stopOn(vm, host, active, op.force || msLeft(op) <= 0);
      }

      case 'reboot': {
        if (running) return;
        // The host went away before it answered: the request stays, and is sent again once it is back.
        if (lost) {
          await clear();
          return { requeueAfterMs: 0 };
        }
        await clear({ reboot_handled: op.request });
        if (outcome?.ok) await finishTasks(active, ['reboot'], 'rebooted');
        else if (outcome) await failTasks(active, ['reboot'], outcome.code === 'AGENT_ERROR' ? 'REBOOT_FAILED' : outcome.code, outcome.message);
        else await failTasks(active, ['reboot'], 'INTERRUPTED', 'control changed hands while the reboot was sent; the guest may have rebooted');
        return { requeueAfterMs: 0 };
      }

      case 'memory': {
        if (running) return;
        if (outcome?.ok) {
          const actual = (outcome.value as { memoryActualMiB?: number } | undefined)?.memoryActualMiB;
          await clear({ memory_applied_mib: op.targetMiB, ...(actual !== undefined ? { memory_actual_mib: actual } : {}) });
          const task = active.find((t) => t.kind === 'set-memory');
          if (task) await settleMemory(task, op.targetMiB, actual);
        } else if (outcome && !lost) {
          // Applied as far as it goes: it is tried again when the target changes or the guest boots anew.
          await clear({ memory_applied_mib: op.targetMiB });
          await failTasks(active, ['set-memory'], outcome.code === 'AGENT_ERROR' ? 'SET_MEMORY_FAILED' : outcome.code, outcome.message);
        } else {
          await clear(); // not sent by this process, or the host went away: the next pass sends it again
        }
        return { requeueAfterMs: 0 };
      }

      case 'migrate':
        return advanceMigration(ctx, vm, op, active, { outcome, running });
    }
  }

  function liveElsewhere(vm: VmRow) {
    for (const h of registry.all()) {
      if (h.row.id === vm.host_id || !h.connection) continue;
      const seen = h.vms.get(vm.id);
      if (!seen || !UP.includes(seen.state)) continue;
      // A copy from an older placement (its host was failed and the VM restarted elsewhere): stopped there.
      if (seen.token !== undefined && seen.token < vm.placement_token) {
        void stopStale(h, vm, seen.token);
        continue;
      }
      if (seen.state === 'running' || seen.state === 'paused') return h;
    }
    return undefined;
  }

  const stopping = new Set<string>();
  async function stopStale(h: LiveHost, vm: VmRow, token: number): Promise<void> {
    const key = `${h.row.id}/${vm.id}`;
    if (stopping.has(key) || !h.connection) return;
    stopping.add(key);
    try {
      log.warn({ vmId: vm.id, host: h.row.name, token, current: vm.placement_token }, 'stopping a stale copy of a VM');
      await h.connection.command({ op: 'stop', vmId: vm.id, force: true, token: vm.placement_token }, { timeoutMs: 60_000 });
      await h.connection.command({ op: 'delete', vmId: vm.id, token: vm.placement_token }, { timeoutMs: 60_000 });
      h.vms.delete(vm.id);
      await events.emit({
        type: 'vm.stale-copy-stopped', objectKind: 'vm', objectId: vm.id,
        message: `host ${h.row.name} still ran VM ${vm.name} from an older placement (token ${token} < ${vm.placement_token}); that copy was stopped`,
      });
    } catch (err) {
      log.error({ err, vmId: vm.id, host: h.row.name }, 'could not stop a stale copy');
    } finally {
      stopping.delete(key);
    }
  }

  /** Tells a host to drop its definition of a VM that no longer runs there. */
  async function forget(hostId: string, vmId: string): Promise<void> {
    const host = registry.get(hostId);
    if (!host?.connection || !host.vms.has(vmId)) return;
    await host.connection.command({ op: 'delete', vmId }, { timeoutMs: 60_000 });
    host.vms.delete(vmId);
  }

  async function reconcileDelete(vm: VmRow, active: Task[]): Promise<ReconcileResult> {
    if (vm.phase !== 'deleting') vm = await write(vm, { phase: 'deleting' });
    const host = vm.host_id ? registry.get(vm.host_id) : undefined;
    const seen = host?.vms.get(vm.id);
    if (host && seen) {
      if (!host.connection) {
        if (host.row.state === 'ready' || host.row.state === 'joining') return { requeueAfterMs: 2000 };
        // The host is gone: the VM cannot be cleared there now. Keep it, and say so.
        const why = `host ${host.row.name} is ${host.row.state}; delete the VM again once it is back`;
        await write(vm, { phase: 'unknown', message: why });
        await failTasks(active, ['delete'], 'HOST_NOT_READY', why);
        return;
      }
      // A running guest is stopped first (one command, one pass), then its definition dropped.
      if (UP.includes(seen.state)) return stopOn(vm, host, active, true);
      await forget(host.row.id, vm.id);
    }
    // Other hosts may keep a stopped trace of it (a migration that did not arrive): clear those too.
    for (const other of registry.all()) {
      if (other !== host && other.vms.has(vm.id)) await forget(other.row.id, vm.id).catch(() => undefined);
    }
    await deps.removeVolumes(vm.id);
    const gone = await store.remove(vm);
    if (Number(gone.numDeletedRows) !== 1) throw new StaleRow(`VM ${vm.id} changed while it was deleted`);
    capacity.release(vm.id);
    await events.emit({ type: 'vm.deleted', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} deleted` });
    await finishTasks(active, ['delete'], 'deleted');
    await failTasks(active, ['create', 'start', 'stop', 'migrate', 'reboot', 'set-memory'], 'VM_DELETED', 'the VM was deleted');
  }

  const controller: Controller = {
    name: 'vms',
    watches: ['vm'],
    reconcile,
    concurrency: 64,
    resyncMs: deps.resyncMs,
    listKeys: () => store.ids(),
  };

  return { controller };
}

/** What the migration steps share with the reconciler. */
export type VmControllerContext = {
  store: VmStore;
  tasks: TaskService;
  events: EventService;
  registry: HostRegistry;
  capacity: CapacityIndex;
  log: Logger;
  commands: ReturnType<typeof createVmCommands>;
  policy?: PlacementPolicy;
  replicas?: ReplicaFailover;
  buildSpec: (vm: VmRow) => Promise<VmSpecMsg>;
  write: (vm: VmRow, patch: VmStatusPatch, why?: string) => Promise<VmRow>;
  send: (
    vm: VmRow, host: LiveHost, op: OpDraft, command: Parameters<ReturnType<typeof createVmCommands>['send']>[2],
    timeoutMs: number, patch?: VmStatusPatch, opts?: { onProgress?: (f: number) => void; why?: string },
  ) => Promise<VmRow>;
  assign: (vm: VmRow, hostId: string) => void;
  hostName: (id: string | null) => string;
};
