// Live migration as the VM reconciler drives it: prepare the destination, send, confirm. Before the
// source lets go, any failure leaves the VM where it ran; after, the VM belongs to the destination.
import type { MigrationResult, MigrationTarget } from '../../drivers/types.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { Task } from '../features/tasks/service.ts';
import type { VmRow } from '../store/schema.ts';
import type { VmControllerContext } from './vm-controller.ts';

export async function migrateVm(ctx: VmControllerContext, vm: VmRow, task: Task, signal: AbortSignal): Promise<void> {
  const { registry, capacity, tasks, events } = ctx;
  const src = registry.get(vm.host_id!);
  const dst = registry.get(vm.target_host_id!);
  const fail = async (code: string, message: string) => {
    capacity.release(`${vm.id}:incoming`);
    const current = await ctx.db.selectFrom('vms').selectAll().where('id', '=', vm.id).executeTakeFirstOrThrow();
    await ctx.update(current, { target_host_id: null, phase: current.phase === 'migrating' ? 'running' : current.phase, message: code === 'CANCELLED' ? null : `migration failed: ${message}` });
    if (code === 'CANCELLED') await tasks.cancelled(task.id, message);
    else await tasks.fail(task.id, code, message);
  };
  if (!src?.connection || !dst?.connection) {
    return fail('HOST_NOT_READY', `${!src?.connection ? 'source' : 'destination'} host is not connected`);
  }
  capacity.assign(`${vm.id}:incoming`, dst.row.id, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: null });
  vm = await ctx.update(vm, { phase: 'migrating' }, `to ${dst.row.name}`);
  await tasks.progress(task.id, 5, `preparing ${dst.row.name}`);
  let prepared = false;
  let handedOver = false;
  try {
    const spec = await ctx.buildSpec(vm);
    const target = await dst.connection.command<MigrationTarget>({ op: 'prepareIncoming', spec }, { timeoutMs: 60_000 });
    prepared = true;
    let lastReported = 0;
    const result = await src.connection.command<MigrationResult>(
      { op: 'migrate', vmId: vm.id, uri: target.uri, ...(target.nbd ? { nbd: target.nbd } : {}) },
      {
        timeoutMs: 30 * 60_000,
        signal,
        onProgress: (fraction) => {
          const pct = 10 + Math.floor(fraction * 80);
          if (pct > lastReported) {
            lastReported = pct;
            void tasks.progress(task.id, pct, `copying memory to ${dst.row.name}`);
          }
        },
      },
    );
    // The source let go of the VM: from here on it lives on the destination, whatever happens next.
    // Recording anything else would let the reconciler start a second copy on the source.
    handedOver = true;
    src.vms.delete(vm.id);
    capacity.release(`${vm.id}:incoming`);
    capacity.assign(vm.id, dst.row.id, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
    vm = await ctx.update(vm, { host_id: dst.row.id, target_host_id: null }, `handed over to ${dst.row.name}`);
    await tasks.progress(task.id, 92, `waiting for ${dst.row.name} to run the VM`);
    try {
      await dst.connection?.command({ op: 'completeIncoming', vmId: vm.id, timeoutMs: 30_000 }, { timeoutMs: 45_000 });
    } catch (err) {
      const message = `the VM was handed to ${dst.row.name}, which did not confirm it runs: ${err instanceof Error ? err.message : String(err)}`;
      await ctx.update(vm, { phase: 'unknown', message }, message);
      await tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', message);
      return;
    }
    await ctx.update(vm, { phase: 'running', message: null }, `migrated from ${src.row.name}`);
    // The agent's answer has no schema: the mode becomes a metrics label, so only the two known values pass.
    const mode = result.mode === 'paused' ? 'paused' : 'live';
    const how = mode === 'paused' ? ', paused for the whole copy' : '';
    await tasks.succeed(task.id, `migrated to ${dst.row.name} in ${result.totalMs} ms (downtime ${result.downtimeMs} ms${how})`, {
      from: src.row.id,
      to: dst.row.id,
      mode,
      totalMs: result.totalMs,
      downtimeMs: result.downtimeMs,
    });
    await events.emit({ type: 'vm.migrated', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} migrated from ${src.row.name} to ${dst.row.name}`, data: { mode, totalMs: result.totalMs, downtimeMs: result.downtimeMs } });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (handedOver) {
      // The VM is the destination's now; never pull it back to the source.
      await tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', `after the handover to ${dst.row.name}: ${message}`);
      return;
    }
    const code = err instanceof CommandError ? err.code : undefined;
    if (prepared && (code === 'HOST_DISCONNECTED' || code === 'COMMAND_TIMEOUT')) {
      // Whether the source let go is unknown: leave the target set, so recovery settles the VM where a
      // host reports it running once both can be heard.
      capacity.release(`${vm.id}:incoming`);
      await tasks.fail(task.id, 'MIGRATION_UNCONFIRMED', `${message}; the VM is settled where it is found running`);
      return;
    }
    if (prepared) await dst.connection?.command({ op: 'abortIncoming', vmId: vm.id }, { timeoutMs: 30_000 }).catch(() => undefined);
    await fail(signal.aborted ? 'CANCELLED' : 'MIGRATION_FAILED', signal.aborted ? 'cancelled; the VM keeps running on its host' : message);
  }
}

/**
 * A migration target is set but no task of this process drives it: control restarted mid-migration, or
 * the outcome was lost with a host's connection. Settle the VM where an agent reports it running and fail
 * any leftover migrate task with the reason.
 */
export async function recoverMigration(ctx: VmControllerContext, vm: VmRow, active: Task[]): Promise<{ requeueAfterMs: number } | void> {
  const src = ctx.registry.get(vm.host_id!);
  const dst = ctx.registry.get(vm.target_host_id!);
  // Decide only once each host has either reported in or been declared unreachable.
  const pending = (h: typeof src) => h && !h.connection && (h.row.state === 'ready' || h.row.state === 'joining');
  if (pending(src) || pending(dst)) return { requeueAfterMs: 250 };
  const onDst = dst?.vms.get(vm.id)?.state === 'running';
  if (!onDst && dst?.connection && dst.vms.has(vm.id)) {
    await dst.connection.command({ op: 'abortIncoming', vmId: vm.id }, { timeoutMs: 30_000 }).catch(() => undefined);
  }
  await ctx.update(vm, { host_id: onDst ? vm.target_host_id : vm.host_id, target_host_id: null, phase: 'running', message: 'settled after an interrupted migration' });
  for (const t of active) if (t.kind === 'migrate') await ctx.tasks.fail(t.id, 'INTERRUPTED', 'the migration was interrupted (control restarted or a host went silent)');
}
