// Making a lease permanent: the memory becomes part of the VM's spec (its boot memory grows), held on its own
// host when that host has room for it, else on a host it moves to. Nothing of it stays on a donor.
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { LeaseRow, VmRow } from '../store/schema.ts';
import { AppError } from '../errors.ts';
import { type BrokerContext, AGAIN, WAIT, StepFailed, deadline, hostName, writeLease } from './context.ts';
import { placeGrown } from './mechanisms.ts';
import { type Plan, type PermanentStep, planOf } from './plan.ts';
import { beginReturn, dropRemote } from './unwind.ts';

export async function permanentStep(ctx: BrokerContext, l: LeaseRow, vm: VmRow): Promise<ReconcileResult> {
  const plan = planOf(l);
  const p = plan.permanent ?? { step: 'decide' as PermanentStep };
  const to = (step: PermanentStep, extra: Partial<Plan> = {}, patch: Partial<LeaseRow> = {}) =>
    writeLease(ctx, l, { ...patch, planned: { ...plan, ...extra, permanent: { ...p, ...extra.permanent, step } }, step_deadline: deadline(ctx) }).then(() => AGAIN);
  const refuse = async (code: string, message: string): Promise<ReconcileResult> => {
    // A lease asked permanent from the start is undone; a temporary one stays as it was.
    if (l.kind === 'permanent') return beginReturn(ctx, l, `cannot be made permanent: ${message}`, { code, message });
    await writeLease(ctx, l, { permanent_requested: 0, planned: { ...plan, permanent: undefined }, message: `still temporary: ${message}` });
    if (l.task_id) await ctx.tasks.fail(l.task_id, code, message);
  };
  if (vm.phase !== 'running' || !vm.host_id) return p.step === 'commit' ? commit(ctx, l, vm, plan) : WAIT;

  switch (p.step) {
    case 'decide': {
      if (vm.memory_mib + l.size_mib > vm.max_memory_mib) return refuse('UNSUPPORTED', `VM ${vm.name} would boot with ${vm.memory_mib + l.size_mib} MiB, above its maxMemoryMiB ${vm.max_memory_mib}`);
      if ((ctx.capacity.usage(vm.host_id)?.freeMiB ?? 0) >= l.size_mib) return to('grow');
      const placed = placeGrown(vm, l.size_mib, ctx.capacity);
      if (!placed.ok) return refuse('NO_CAPACITY', `host ${hostName(ctx, vm.host_id)} has no room for it and no other host does: ${placed.reason}`);
      // The device cannot go along: the guest takes its pages back before the move.
      if (plan.remote) {
        await dropRemote(ctx, l, plan.remote, vm.id);
        return to('migrate', { remote: undefined, permanent: { step: 'migrate', toHostId: placed.hostId } }, { donor_host_id: null });
      }
      return to('migrate', { permanent: { step: 'migrate', toHostId: placed.hostId } });
    }
    case 'migrate': {
      if (!p.migrateTaskId) {
        const { taskId } = await ctx.migrate(vm.id, p.toHostId!).catch((err: unknown) => {
          throw new StepFailed(err instanceof AppError ? err.code : 'MIGRATION_FAILED', err instanceof Error ? err.message : String(err));
        });
        await writeLease(ctx, l, { planned: { ...plan, permanent: { ...p, migrateTaskId: taskId } } });
        return WAIT;
      }
      const task = await ctx.tasks.get(p.migrateTaskId);
      if (task.state === 'failed' || task.state === 'cancelled') return refuse(task.error?.code ?? 'MIGRATION_FAILED', `the move of VM ${vm.name} ${task.state}: ${task.error?.message ?? ''}`);
      if (vm.host_id !== p.toHostId || vm.target_host_id) return WAIT;
      return to('grow', {}, { borrower_host_id: vm.host_id, mechanism: 'migrate' });
    }
    case 'grow': {
      const target = (plan.previousTargetMiB ?? vm.memory_mib) + l.size_mib;
      const state = await ctx.targets.reach(vm.id, target);
      if (state === 'waiting') return WAIT;
      if (plan.remote) {
        await dropRemote(ctx, l, plan.remote, vm.id);
        return to('commit', { remote: undefined, targetMiB: target }, { donor_host_id: null });
      }
      return to('commit', { targetMiB: target });
    }
    case 'commit':
      return commit(ctx, l, vm, plan);
  }
}

/** The VM's spec takes the memory: it boots with it from now on, and the lease has nothing left to undo. */
async function commit(ctx: BrokerContext, l: LeaseRow, vm: VmRow, plan: Plan): Promise<ReconcileResult> {
  // Neighbours ballooned for a reclaim get their memory back: the host holds the VM's growth on paper now.
  for (const n of plan.neighbours ?? []) await ctx.targets.restore(n.vmId, n.previousTargetMiB);
  const memoryMiB = vm.memory_mib + l.size_mib;
  await ctx.targets.set(vm.id, plan.previousTargetMiB === null ? null : plan.previousTargetMiB + l.size_mib, { memory_mib: memoryMiB });
  const message = `permanent: VM ${vm.name} has ${memoryMiB} MiB on host ${hostName(ctx, vm.host_id)}`;
  await writeLease(ctx, l, {
    kind: 'permanent', permanent_requested: 0, expires_at: null, donor_host_id: null, borrower_host_id: vm.host_id,
    mechanism: l.mechanism === 'migrate' ? 'migrate' : 'grow', message, step_deadline: null,
    planned: { step: 'done', previousTargetMiB: plan.previousTargetMiB },
  });
  await ctx.events.emit({ type: 'memory.lease.permanent', objectKind: 'memory-lease', objectId: l.id, message, data: { vmId: vm.id, sizeMiB: l.size_mib, memoryMiB } });
  if (l.task_id) await ctx.tasks.succeed(l.task_id, message, { leaseId: l.id, memoryMiB });
}
