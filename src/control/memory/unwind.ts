// Giving a lease back, or undoing a grant that failed half-way: the remote device and its export go, the
// VM's memory target and its neighbours' go back to what they were; then the lease ends.
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { LeaseRow } from '../store/schema.ts';
import { CommandError } from '../features/agents/connection.ts';
import { type BrokerContext, AGAIN, WAIT, command, deadline, pastDeadline, writeLease } from './context.ts';
import { type Plan, planOf } from './plan.ts';

/** Begins the return (failure: why the grant is undone, and the lease then ends failed). */
export async function beginReturn(ctx: BrokerContext, l: LeaseRow, why: string, failure?: Plan['failure']): Promise<ReconcileResult> {
  const plan = { ...planOf(l), ...(failure ? { failure } : {}) };
  await writeLease(ctx, l, { state: 'returning', message: why, planned: plan, step_deadline: deadline(ctx) }, { message: `memory lease ${l.id}: ${why}`, data: failure ? { code: failure.code } : {} });
  if (l.task_id) await ctx.tasks.progress(l.task_id, 60, why);
  return AGAIN;
}

/** Unplugs the remote device and frees its export; a host that is gone took its part with it. */
export async function dropRemote(ctx: BrokerContext, l: LeaseRow, remote: NonNullable<Plan['remote']>, vmId: string): Promise<void> {
  const gone = (err: unknown) => err instanceof CommandError && (err.code === 'HOST_DISCONNECTED' || err.code === 'VM_NOT_FOUND' || err.code === 'VM_NOT_RUNNING');
  const alive = (id: string | null) => {
    const h = id ? ctx.registry.get(id) : undefined;
    return !!h && h.row.state !== 'failed' && h.row.state !== 'fenced';
  };
  if (l.borrower_host_id && alive(l.borrower_host_id)) {
    await command(ctx, l.borrower_host_id, { op: 'remoteMemoryDetach', vmId, slot: remote.slot }).catch((err: unknown) => {
      if (!gone(err)) throw err;
    });
  }
  if (l.donor_host_id && alive(l.donor_host_id)) await command(ctx, l.donor_host_id, { op: 'memoryUnexport', name: remote.exportName });
}

/** One step of a return under way. */
export async function returnStep(ctx: BrokerContext, l: LeaseRow): Promise<ReconcileResult> {
  const plan = planOf(l);
  const late = pastDeadline(l);
  if (plan.remote) {
    await dropRemote(ctx, l, plan.remote, l.vm_id);
    await writeLease(ctx, l, { planned: { ...plan, remote: undefined } });
    return AGAIN;
  }
  if (plan.targetMiB !== undefined || plan.permanent) {
    // Past the deadline the target is put back as it was, whether the guest follows or not.
    const state = late ? await ctx.targets.set(l.vm_id, plan.previousTargetMiB).then(() => 'reached') : await ctx.targets.restore(l.vm_id, plan.previousTargetMiB);
    if (state === 'waiting') return WAIT;
    await writeLease(ctx, l, { planned: { ...plan, targetMiB: undefined, permanent: undefined }, step_deadline: deadline(ctx) });
    return AGAIN;
  }
  if (plan.neighbours?.length) {
    const states = await Promise.all(plan.neighbours.map((n) => (late ? ctx.targets.set(n.vmId, n.previousTargetMiB).then(() => 'reached') : ctx.targets.restore(n.vmId, n.previousTargetMiB))));
    const left = plan.neighbours.filter((_, i) => states[i] === 'waiting');
    if (left.length === plan.neighbours.length) return WAIT;
    await writeLease(ctx, l, { planned: { ...plan, neighbours: left } });
    return left.length ? WAIT : AGAIN;
  }
  return finish(ctx, l, plan);
}

async function finish(ctx: BrokerContext, l: LeaseRow, plan: Plan): Promise<ReconcileResult> {
  const failure = plan.failure;
  const message = failure ? `failed: ${failure.message}` : `returned: ${l.message ?? 'given back'}`;
  await writeLease(ctx, l, { state: failure ? 'failed' : 'returned', message, ended_at: new Date().toISOString(), step_deadline: null, planned: { ...plan, step: 'done' } }, {
    message: `memory lease ${l.id} of VM ${l.vm_id} ${failure ? `failed: ${failure.message}` : `returned ${l.size_mib} MiB`}`,
    ...(failure ? { data: { code: failure.code } } : {}),
  });
  if (l.task_id) {
    if (failure) await ctx.tasks.fail(l.task_id, failure.code, failure.message);
    else await ctx.tasks.succeed(l.task_id, message, { leaseId: l.id });
  }
}
