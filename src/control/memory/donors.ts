// A donor going away. One going into maintenance hands its loans over first (another donor takes the
// export, the borrower plugs it in, the old device goes), or the device is unplugged while the donor still
// serves it. One that died took the guest's swapped-out pages with it: the device is dropped and the VM
// restarted, with an event that says why. A dead donor that held no pages only costs the device.
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { LeaseRow, VmRow } from '../store/schema.ts';
import { type BrokerContext, AGAIN, command, hostName, writeLease } from './context.ts';
import { pickDonor } from './mechanisms.ts';
import { planOf } from './plan.ts';
import { exportNameOf } from './grant.ts';
import { beginReturn, dropRemote } from './unwind.ts';

export type DonorHealth = 'fine' | 'leaving' | 'dead';

export function donorHealth(ctx: BrokerContext, l: LeaseRow): DonorHealth {
  const donor = l.donor_host_id ? ctx.registry.get(l.donor_host_id) : undefined;
  if (!l.donor_host_id || planOf(l).remote === undefined) return 'fine';
  if (!donor || donor.row.state === 'failed' || donor.row.state === 'fenced') return 'dead';
  return donor.row.maintenance === 1 ? 'leaving' : 'fine';
}

/** The active remote lease's donor leaves or died: one step toward safety. */
export async function donorGone(ctx: BrokerContext, l: LeaseRow, vm: VmRow, health: Exclude<DonorHealth, 'fine'>): Promise<ReconcileResult> {
  const plan = planOf(l);
  const remote = plan.remote!;
  const donorName = hostName(ctx, l.donor_host_id);
  if (health === 'leaving') {
    const next = pickDonor(ctx.registry.all(), vm.host_id ?? '', l.size_mib, ctx.policy);
    if (!next) return beginReturn(ctx, l, `donor ${donorName} goes into maintenance and no other host can lend ${l.size_mib} MiB: the device is unplugged`);
    // The new device comes in before the old one goes, so the guest always has somewhere to swap.
    const exportName = `${exportNameOf(l.id)}-${remote.slot === 0 ? 1 : 0}`;
    const slot = remote.slot === 0 ? 1 : 0;
    const r = await command<{ target: NonNullable<typeof remote.target> }>(ctx, next.row.id, { op: 'memoryExport', name: exportName, sizeMiB: l.size_mib });
    await command(ctx, vm.host_id!, { op: 'remoteMemoryAttach', vmId: vm.id, slot, target: r.target, sizeMiB: l.size_mib });
    await dropRemote(ctx, l, remote, vm.id);
    await writeLease(ctx, l, { donor_host_id: next.row.id, message: `moved from donor ${donorName} (maintenance) to ${next.row.name}`, planned: { ...plan, remote: { slot, exportName, target: r.target } } });
    await ctx.events.emit({ type: 'memory.lease.moved', objectKind: 'memory-lease', objectId: l.id, message: `memory lease ${l.id} of VM ${vm.name} moved from donor ${donorName} to ${next.row.name}`, data: { vmId: vm.id, from: l.donor_host_id, to: next.row.id } });
    return AGAIN;
  }
  const seen = vm.host_id ? ctx.registry.get(vm.host_id)?.vms.get(vm.id) : undefined;
  const heldMiB = seen?.swapUsedMiB ?? 0;
  const dead = { ...l, donor_host_id: null };
  await dropRemote(ctx, dead, remote, vm.id);
  if (heldMiB === 0) {
    await writeLease(ctx, l, { planned: { ...plan, remote: undefined } });
    return beginReturn(ctx, (await ctx.leases.get(l.id))!, `donor ${donorName} died holding none of the guest's pages: the device was unplugged`, { code: 'DONOR_LOST', message: `donor ${donorName} died; the device was unplugged` });
  }
  const why = `donor ${donorName} died holding ${heldMiB} MiB of VM ${vm.name}'s swapped-out memory; the VM is restarted`;
  await ctx.events.emit({ type: 'memory.lease.donor-lost', objectKind: 'memory-lease', objectId: l.id, message: why, data: { vmId: vm.id, donorHostId: l.donor_host_id, heldMiB } });
  await ctx.restart(vm.id);
  await writeLease(ctx, l, { planned: { ...plan, remote: undefined } });
  return beginReturn(ctx, (await ctx.leases.get(l.id))!, why, { code: 'DONOR_LOST', message: why });
}
