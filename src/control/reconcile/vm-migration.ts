// Live migration as passes of the VM controller, one command each: prepare the destination, send from the
// source, confirm on the destination. Before the source lets go, any failure or a cancel leaves the VM
// where it ran; after, the VM belongs to the destination. A request cancelled or superseded (a stop, a
// delete) while the memory is copied is cancelled on the source at once.
import type { MigrationResult, MigrationTarget } from '../../drivers/types.ts';
import type { Task } from '../features/tasks/service.ts';
import { type MigrateRequest, pendingMigration } from '../features/vms/store.ts';
import type { VmRow } from '../store/schema.ts';
import type { LiveHost } from '../features/hosts/registry.ts';
import type { ReconcileResult } from './queue.ts';
import type { Outcome } from './vm-commands.ts';
import type { VmControllerContext } from './vm-controller.ts';
import { type VmOp, opTimeoutMs } from './vm-op.ts';

type MigrateOp = Extract<VmOp, { kind: 'migrate' }>;

const incoming = (vmId: string) => `${vmId}:incoming`;

/**
 * A host that has not reported since this process took over (or since its connection broke) and may still
 * come back with the copy under way: its lease has not run out.
 */
const awaited = (h: LiveHost | undefined) =>
  !!h && !h.connection && (h.row.state === 'ready' || h.row.state === 'joining' || (h.row.state === 'unreachable' && Date.now() < h.leaseExpiresMs));
const UP = ['running', 'starting', 'paused'];

/** Picks the destination (the user's, or the scheduler's) and asks it to get ready. */
export async function beginMigration(ctx: VmControllerContext, vm: VmRow, req: MigrateRequest, active: Task[]): Promise<ReconcileResult> {
  const task = active.find((t) => t.kind === 'migrate');
  let to = req.targetHostId;
  // On replicated storage the VM moves onto the copy of its disk, wherever that is by now.
  const copy = await ctx.replicas?.copyOf(vm);
  if (copy && 'none' in copy) return refuse(ctx, vm, req, task, 'INVALID_STATE', `its disk has no copy on another host to move onto (${copy.none})`);
  if (copy) {
    const where = ctx.hostName(copy.hostId);
    if (!copy.inStep) return refuse(ctx, vm, req, task, 'INVALID_STATE', `the copy of its disk on ${where} is ${copy.state}`);
    if (to && to !== copy.hostId) return refuse(ctx, vm, req, task, 'UNSUPPORTED', `on replicated storage it moves only to ${where}, which holds the copy of its disk`);
    to = copy.hostId;
  }
  if (!to) {
    const placement = ctx.capacity.place({
      memoryMiB: vm.memory_mib, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>,
      antiAffinity: vm.anti_affinity, exclude: vm.host_id ? [vm.host_id] : [],
    }, ctx.policy ?? 'spread');
    if (!placement.ok) return refuse(ctx, vm, req, task, 'NO_CAPACITY', placement.reason);
    to = placement.hostId;
  }
  const src = ctx.registry.get(vm.host_id!);
  const dst = ctx.registry.get(to);
  if (!dst?.connection || !src?.connection) {
    return refuse(ctx, vm, req, task, 'HOST_NOT_READY', `${!src?.connection ? 'source' : 'destination'} host is not connected`);
  }
  if (to === vm.host_id) return refuse(ctx, vm, req, task, 'INVALID_STATE', `VM ${vm.name} already runs on ${dst.row.name}`);
  // The destination's copy is a new placement; the source's copy keeps the old token until it lets go.
  const token = vm.placement_token + 1;
  const spec = { ...(await ctx.buildSpec(vm)), token };
  if (copy) {
    // The destination serves each disk's copy and takes it over; nothing of those disks is sent.
    spec.disks = spec.disks.map(({ replica, ...d }) => (replica ? { ...d, replicaHere: true } : d));
    if (!spec.disks.some((d) => d.replicaHere)) return refuse(ctx, vm, req, task, 'INVALID_STATE', 'the copy of its disk is not served yet');
  }
  ctx.capacity.assign(incoming(vm.id), dst.row.id, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: null });
  if (task) await ctx.tasks.progress(task.id, 5, `preparing ${dst.row.name}`);
  try {
    await ctx.send(vm, dst, { kind: 'migrate', stage: 'preparing', requestId: req.id, from: src.row.id, to: dst.row.id }, { op: 'prepareIncoming', spec }, opTimeoutMs.preparing,
      { phase: 'migrating', target_host_id: dst.row.id, placement_token: token }, { why: `to ${dst.row.name}` });
  } catch (err) {
    ctx.capacity.release(incoming(vm.id));
    throw err;
  }
}

async function refuse(ctx: VmControllerContext, vm: VmRow, req: MigrateRequest, task: Task | undefined, code: string, message: string): Promise<void> {
  await ctx.write(vm, { migrate_handled: req.id, message: `migration failed: ${message}` });
  if (task) await ctx.tasks.fail(task.id, code, message);
}

export async function advanceMigration(
  ctx: VmControllerContext, vm: VmRow, op: MigrateOp, active: Task[], { outcome, running }: { outcome: Outcome | undefined; running: boolean },
): Promise<ReconcileResult> {
  const task = active.find((t) => t.kind === 'migrate');
  const src = ctx.registry.get(op.from);
  const dst = ctx.registry.get(op.to);
  // Still wanted: the same request, for a VM that should run and is not being deleted.
  const wanted = pendingMigration(vm)?.id === op.requestId && vm.desired_power === 'running' && !vm.deleting;

  /** Ends the migration with the VM running where it was. */
  const giveUp = async (code: string, message: string) => {
    if (dst?.connection) dst.connection.command({ op: 'abortIncoming', vmId: vm.id }, { timeoutMs: 30_000 }).catch(() => undefined);
    ctx.capacity.release(incoming(vm.id));
    const cancelled = code === 'CANCELLED';
    await ctx.write(vm, { op: null, target_host_id: null, phase: 'running', migrate_handled: op.requestId, message: cancelled ? null : `migration failed: ${message}` });
    if (task && cancelled) await ctx.tasks.cancelled(task.id, message);
    else if (task) await ctx.tasks.fail(task.id, code, message);
    return { requeueAfterMs: 0 };
  };
  const cancelledWhy = () => (vm.deleting ? 'superseded by a delete' : vm.desired_power !== 'running' ? 'superseded by a stop' : 'cancelled; the VM keeps running on its host');

  /** The source let go of the VM: from here on it lives on the destination, whatever happens next. */
  const handOver = async (result: MigrationResult | undefined): Promise<ReconcileResult> => {
    // Recording anything else would let the controller start a second copy on the source.
    src?.vms.delete(vm.id);
    // The copy of its disk is its disk now; the source's old disk is a leftover (QEMU's source deletes it anyway).
    if (vm.replicated) await ctx.replicas?.promote(vm, op.to);
    ctx.capacity.release(incoming(vm.id));
    ctx.assign(vm, op.to);
    if (task) await ctx.tasks.progress(task.id, 92, `waiting for ${dst?.row.name ?? op.to} to run the VM`);
    if (!dst?.connection) {
      await ctx.write(vm, { host_id: op.to, target_host_id: null, op: null, phase: 'unknown', migrate_handled: op.requestId, message: 'handed over to a destination that is not connected' });
      if (task) await ctx.tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', 'the destination went away during the handover');
      return;
    }
    await ctx.send(vm, dst, { ...op, stage: 'completing', ...(result ? { result } : {}) }, { op: 'completeIncoming', vmId: vm.id, timeoutMs: 30_000 }, opTimeoutMs.completing,
      { host_id: op.to, target_host_id: null }, { why: `handed over to ${dst.row.name}` });
  };

  switch (op.stage) {
    case 'preparing': {
      if (running) return;
      if (!outcome) {
        // Asked by an earlier process: start over from a clean destination (the request is still in spec).
        if (dst?.connection) await dst.connection.command({ op: 'abortIncoming', vmId: vm.id }, { timeoutMs: 30_000 }).catch(() => undefined);
        ctx.capacity.release(incoming(vm.id));
        await ctx.write(vm, { op: null, target_host_id: null, phase: 'running' }, 'the migration starts over');
        return { requeueAfterMs: 0 };
      }
      if (!outcome.ok) return giveUp(outcome.code === 'AGENT_ERROR' ? 'MIGRATION_FAILED' : outcome.code, outcome.message);
      if (!wanted) return giveUp('CANCELLED', cancelledWhy());
      if (!src?.connection) return giveUp('HOST_NOT_READY', 'the source host is not connected');
      const target = outcome.value as MigrationTarget;
      const where = { uri: target.uri, ...(target.nbd ? { nbd: target.nbd } : {}), ...(target.viaReplica ? { viaReplica: true } : {}) };
      let lastReported = 0;
      await ctx.send(vm, src, { ...op, stage: 'sending', ...where }, { op: 'migrate', vmId: vm.id, ...where }, opTimeoutMs.sending, {}, {
          onProgress: (fraction) => {
            const pct = 10 + Math.floor(fraction * 80);
            if (task && pct > lastReported) {
              lastReported = pct;
              void ctx.tasks.progress(task.id, pct, `copying memory to ${dst?.row.name ?? op.to}`);
            }
          },
        });
      return;
    }

    case 'sending': {
      if (running) {
        if (!wanted && !op.cancelling) {
          ctx.commands.cancel(src, op.commandId);
          await ctx.write(vm, { op: JSON.stringify({ ...op, cancelling: true }) });
        }
        return;
      }
      if (!outcome || (!outcome.ok && outcome.code === 'HOST_DISCONNECTED')) {
        // Sent by an earlier leader, or the source's connection broke: its answer does not come here, so
        // the source's report (once it is back) tells how the copy goes.
        if (awaited(src) || awaited(dst)) return { requeueAfterMs: 250 };
        const seen = src?.connection ? src.vms.get(vm.id) : undefined;
        if (seen?.migrating) {
          if (!wanted && !op.cancelling) {
            src!.connection!.cancel(op.commandId);
            await ctx.write(vm, { op: JSON.stringify({ ...op, cancelling: true }) });
          }
          // The source reports when the copy ends; the resync is a safety net.
          return { requeueAfterMs: 5000 };
        }
        if (seen && UP.includes(seen.state)) {
          return giveUp(op.cancelling || !wanted ? 'CANCELLED' : 'MIGRATION_FAILED', op.cancelling || !wanted ? cancelledWhy() : `the copy to ${dst?.row.name ?? op.to} ended without a handover while control changed hands`);
        }
        if (src?.connection) return handOver(undefined);
      }
      if (outcome?.ok) return handOver(outcome.value as MigrationResult);
      if (outcome && outcome.code !== 'HOST_DISCONNECTED' && outcome.code !== 'COMMAND_TIMEOUT') {
        return giveUp(op.cancelling || !wanted ? 'CANCELLED' : outcome.code === 'AGENT_ERROR' ? 'MIGRATION_FAILED' : outcome.code, op.cancelling || !wanted ? cancelledWhy() : outcome.message);
      }
      // Whether the source let go is unknown (its connection broke, or it went silent): keep the
      // destination recorded, so recovery settles the VM where a host reports it running.
      ctx.capacity.release(incoming(vm.id));
      await ctx.write(vm, { op: null });
      if (task) await ctx.tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', `${outcome?.message ?? `host ${src?.row.name ?? op.from} went away during the copy`}; the VM is settled where it is found running`);
      return { requeueAfterMs: 0 };
    }

    case 'completing': {
      if (running) return;
      const result = (op as MigrateOp & { result?: MigrationResult }).result;
      const seen = dst?.vms.get(vm.id);
      if (outcome?.ok || (!outcome && seen?.state === 'running')) return finished(ctx, vm, op, task, result);
      if (!outcome && awaited(dst)) return { requeueAfterMs: 250 };
      if (!outcome && dst?.connection) {
        await ctx.send(vm, dst, op, { op: 'completeIncoming', vmId: vm.id, timeoutMs: 30_000 }, opTimeoutMs.completing);
        return;
      }
      const message = `the VM was handed to ${dst?.row.name ?? op.to}, which did not confirm it runs: ${outcome?.message ?? 'it is not connected'}`;
      await ctx.write(vm, { op: null, phase: 'unknown', migrate_handled: op.requestId, message }, message);
      if (task) await ctx.tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', message);
      return { requeueAfterMs: 0 };
    }
  }
}

async function finished(ctx: VmControllerContext, vm: VmRow, op: MigrateOp, task: Task | undefined, result: MigrationResult | undefined): Promise<ReconcileResult> {
  const from = ctx.hostName(op.from);
  const to = ctx.hostName(op.to);
  // Memory targets are applied again on the destination.
  await ctx.write(vm, { op: null, phase: 'running', message: null, migrate_handled: op.requestId, memory_applied_mib: null }, `migrated from ${from}`);
  // The agent's answer has no schema: the mode becomes a metrics label, so only the two known values pass.
  const mode = result?.mode === 'paused' ? 'paused' : 'live';
  const how = mode === 'paused' ? ', paused for the whole copy' : '';
  if (task) {
    // A copy a previous leader started has no figures here.
    const figures = result ? ` in ${result.totalMs} ms (downtime ${result.downtimeMs} ms${how})` : '';
    await ctx.tasks.succeed(task.id, `migrated to ${to}${figures}`, {
      from: op.from, to: op.to, mode, totalMs: result?.totalMs, downtimeMs: result?.downtimeMs,
    });
  }
  await ctx.events.emit({ type: 'vm.migrated', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} migrated from ${from} to ${to}`, data: { mode, totalMs: result?.totalMs, downtimeMs: result?.downtimeMs } });
  return { requeueAfterMs: 0 };
}

/**
 * A destination is recorded but no op drives the migration: control restarted mid-migration, or the
 * outcome was lost with a host's connection. Settle the VM where an agent reports it running and fail any
 * leftover migrate task with the reason.
 */
export async function recoverMigration(ctx: VmControllerContext, vm: VmRow, active: Task[]): Promise<ReconcileResult> {
  const src = ctx.registry.get(vm.host_id!);
  const dst = ctx.registry.get(vm.target_host_id!);
  // Decide only once each host has either reported in or been declared unreachable.
  if (awaited(src) || awaited(dst)) return { requeueAfterMs: 250 };
  const onDst = dst?.vms.get(vm.id)?.state === 'running';
  if (!onDst && dst?.connection && dst.vms.has(vm.id)) {
    await dst.connection.command({ op: 'abortIncoming', vmId: vm.id }, { timeoutMs: 30_000 }).catch(() => undefined);
  }
  const req = pendingMigration(vm);
  if (onDst && vm.replicated) await ctx.replicas?.promote(vm, vm.target_host_id!);
  await ctx.write(vm, {
    host_id: onDst ? vm.target_host_id : vm.host_id, target_host_id: null, phase: 'running', message: 'settled after an interrupted migration',
    ...(req ? { migrate_handled: req.id } : {}),
  });
  for (const t of active) if (t.kind === 'migrate') await ctx.tasks.fail(t.id, 'INTERRUPTED', 'the migration was interrupted (control restarted or a host went silent)');
  return { requeueAfterMs: 0 };
}
