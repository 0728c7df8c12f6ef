// Granting a lease: choose the mechanism, then one step a pass (migrate, shrink the neighbours, grow the
// VM, export on the donor, attach on the borrower) until the VM holds the memory.
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { LeaseRow, VmRow } from '../store/schema.ts';
import { AppError } from '../errors.ts';
import { type BrokerContext, AGAIN, StepFailed, WAIT, command, deadline, hostName, writeLease } from './context.ts';
import { chooseMechanism } from './mechanisms.ts';
import { type GrantStep, type Plan, planOf } from './plan.ts';

export const exportNameOf = (leaseId: string) => `awan-lease-${leaseId}`;

/** A lease just asked for: pick how, or fail it with the reason. */
export async function beginGrant(ctx: BrokerContext, l: LeaseRow, vm: VmRow | undefined): Promise<ReconcileResult> {
  const fail = async (code: string, message: string) => {
    await writeLease(ctx, l, { state: 'failed', message, ended_at: new Date().toISOString() }, { message: `memory lease ${l.id} failed: ${message}`, data: { code } });
    if (l.task_id) await ctx.tasks.fail(l.task_id, code, message);
  };
  if (!vm) return fail('VM_NOT_FOUND', 'the VM no longer exists');
  if (vm.phase !== 'running' || !vm.host_id) return fail('VM_NOT_RUNNING', `VM ${vm.name} is ${vm.phase}`);
  const neighbours = (await ctx.vms.list({ limit: 10_000, hostId: vm.host_id })).filter((n) => n.phase === 'running');
  const choice = chooseMechanism({
    vm, sizeMiB: l.size_mib, kind: l.kind, asked: l.mechanism_asked, donorHostId: l.donor_asked,
    hosts: ctx.registry.all(), neighbours, capacity: ctx.capacity, policy: ctx.policy,
  });
  if (!choice.ok) return fail(choice.code, choice.reason);
  const first: Record<typeof choice.mechanism, GrantStep> = { grow: 'grow', reclaim: 'shrink', remote: 'export', migrate: 'migrate' };
  const plan: Plan = {
    step: first[choice.mechanism],
    previousTargetMiB: vm.memory_target_mib,
    ...(choice.targetMiB !== undefined ? { targetMiB: choice.targetMiB } : {}),
    ...(choice.neighbours ? { neighbours: choice.neighbours } : {}),
    ...(choice.mechanism === 'remote' ? { remote: { slot: 0, exportName: exportNameOf(l.id) } } : {}),
    ...(choice.toHostId ? { toHostId: choice.toHostId } : {}),
  };
  const how = choice.mechanism === 'remote' ? ` from host ${hostName(ctx, choice.donorHostId ?? null)}` : choice.toHostId ? ` on host ${hostName(ctx, choice.toHostId)}` : ` on host ${hostName(ctx, vm.host_id)}`;
  await writeLease(ctx, l, {
    state: 'granting', mechanism: choice.mechanism, borrower_host_id: vm.host_id, donor_host_id: choice.donorHostId ?? null,
    message: `granting ${l.size_mib} MiB by ${choice.mechanism}${how}`, planned: plan, step_deadline: deadline(ctx),
  });
  if (l.task_id) await ctx.tasks.progress(l.task_id, 10, `granting by ${choice.mechanism}`);
  return AGAIN;
}

/** One step of a grant under way. */
export async function grantStep(ctx: BrokerContext, l: LeaseRow, vm: VmRow): Promise<ReconcileResult> {
  const plan = planOf(l);
  const next = (step: GrantStep, patch: Partial<LeaseRow> = {}) =>
    writeLease(ctx, l, { ...patch, planned: { ...plan, step }, step_deadline: deadline(ctx) }).then(() => AGAIN);
  switch (plan.step) {
    case 'migrate': {
      if (!plan.migrateTaskId) {
        const { taskId } = await ctx.migrate(vm.id, plan.toHostId!).catch((err: unknown) => {
          throw new StepFailed(err instanceof AppError ? err.code : 'MIGRATION_FAILED', `could not move VM ${vm.name}: ${err instanceof Error ? err.message : String(err)}`);
        });
        await writeLease(ctx, l, { planned: { ...plan, migrateTaskId: taskId } });
        if (l.task_id) await ctx.tasks.progress(l.task_id, 30, `moving VM ${vm.name} to host ${hostName(ctx, plan.toHostId!)}`);
        return WAIT;
      }
      const task = await ctx.tasks.get(plan.migrateTaskId);
      if (task.state === 'failed' || task.state === 'cancelled') throw new StepFailed(task.error?.code ?? 'MIGRATION_FAILED', `the move of VM ${vm.name} ${task.state}: ${task.error?.message ?? task.message ?? ''}`);
      if (vm.host_id !== plan.toHostId || vm.phase !== 'running' || vm.target_host_id) return WAIT;
      return next('grow', { borrower_host_id: vm.host_id });
    }
    case 'shrink': {
      const states = await Promise.all((plan.neighbours ?? []).map((n) => ctx.targets.reach(n.vmId, n.toMiB)));
      if (states.some((s) => s === 'waiting')) return WAIT;
      if (l.task_id) await ctx.tasks.progress(l.task_id, 50, 'other VMs gave memory back');
      return next('grow');
    }
    case 'grow': {
      const state = await ctx.targets.reach(vm.id, plan.targetMiB!);
      if (state === 'gone') throw new StepFailed('VM_NOT_RUNNING', `VM ${vm.name} stopped while it was given memory`);
      if (state === 'waiting') return WAIT;
      return activate(ctx, l, plan);
    }
    case 'export': {
      const r = await command<{ target: NonNullable<Plan['remote']>['target'] }>(ctx, l.donor_host_id!, { op: 'memoryExport', name: plan.remote!.exportName, sizeMiB: l.size_mib });
      await writeLease(ctx, l, { planned: { ...plan, step: 'attach', remote: { ...plan.remote!, target: r.target } }, step_deadline: deadline(ctx) });
      if (l.task_id) await ctx.tasks.progress(l.task_id, 50, `host ${hostName(ctx, l.donor_host_id)} serves ${l.size_mib} MiB`);
      return AGAIN;
    }
    case 'attach': {
      await command(ctx, vm.host_id!, { op: 'remoteMemoryAttach', vmId: vm.id, slot: plan.remote!.slot, target: plan.remote!.target!, sizeMiB: l.size_mib });
      return activate(ctx, l, plan);
    }
    case 'done':
      return activate(ctx, l, plan);
  }
}

async function activate(ctx: BrokerContext, l: LeaseRow, plan: Plan): Promise<ReconcileResult> {
  const now = Date.now();
  const expires = l.kind === 'temporary' && l.ttl_s ? new Date(now + l.ttl_s * 1000).toISOString() : null;
  const row = await writeLease(ctx, l, {
    state: 'active', granted_at: new Date(now).toISOString(), expires_at: expires, step_deadline: null, planned: { ...plan, step: 'done' },
    message: `VM holds ${l.size_mib} MiB more by ${l.mechanism}${expires ? ` until ${expires}` : ''}`,
  });
  ctx.grantSeconds.observe({ mechanism: l.mechanism ?? 'unknown' }, (now - Date.parse(l.created_at)) / 1000);
  // A permanent lease's task ends once the memory is in the VM's spec (permanent.ts).
  if (l.task_id && !l.permanent_requested) await ctx.tasks.succeed(l.task_id, row.message!, { leaseId: l.id, mechanism: l.mechanism });
  return l.permanent_requested ? AGAIN : expires ? { requeueAfterMs: Math.max(0, Date.parse(expires) - Date.now()) + 5 } : undefined;
}
