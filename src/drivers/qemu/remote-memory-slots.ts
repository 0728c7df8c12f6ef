// A VM's remote-memory slots as the QEMU driver keeps them: each attach and detach walks the slot through
// attaching → active → detaching, saved in the VM's record so a restarted driver still knows what is plugged.
import { sameRemoteTarget } from '../remote-memory.ts';
import { DriverError, type RemoteMemoryState, type RemoteMemoryStatus, type RemoteMemoryTarget } from '../types.ts';
import { isPlugged, plug, remoteMemoryNode, runInGuest, swapoffScript, swaponScript, unplug } from './remote-memory.ts';
import type { QemuVm } from './vm.ts';

export interface RemoteMemoryOptions {
  reconnectDelayS: number;
  /** How long the guest may take to swap on a new disk (the agent may still be starting in a fresh guest). */
  swaponTimeoutMs: number;
  /** How long swapoff may take: every page on the slot comes back into the guest's RAM first. */
  swapoffTimeoutMs: number;
  /** Reports the VM's changed state. */
  emit: (vm: QemuVm) => void;
}

const slotOf = (vm: QemuVm, slot: number) => vm.record.remoteMemory?.find((r) => r.slot === slot);

async function setSlot(vm: QemuVm, slot: number, entry: RemoteMemoryStatus | undefined): Promise<void> {
  const rest = (vm.record.remoteMemory ?? []).filter((r) => r.slot !== slot);
  const remoteMemory = (entry ? [...rest, entry] : rest).sort((a, b) => a.slot - b.slot);
  vm.record = { ...vm.record, remoteMemory };
  await vm.saveRecord();
}

async function moveTo(vm: QemuVm, entry: RemoteMemoryStatus, state: RemoteMemoryState, reason: string | undefined, o: RemoteMemoryOptions) {
  const { reason: _old, ...base } = entry;
  const next: RemoteMemoryStatus = reason === undefined ? { ...base, state } : { ...base, state, reason };
  await setSlot(vm, entry.slot, next);
  o.emit(vm);
  return next;
}

export async function attachRemoteMemory(vm: QemuVm, slot: number, target: RemoteMemoryTarget, sizeMiB: number, o: RemoteMemoryOptions): Promise<void> {
  const qmp = vm.qmp;
  if (vm.state !== 'running' || !qmp) throw new DriverError('VM_NOT_RUNNING', `${vm.id} is ${vm.state}`);
  const now = slotOf(vm, slot);
  if (now && sameRemoteTarget(now.target, target) && now.sizeMiB === sizeMiB && now.state === 'active') return;
  // What the slot holds goes back first, the safe way (the guest may swap to it): another export, or what a
  // failed or interrupted attach left plugged.
  if (now || (await isPlugged(qmp, slot))) await detachRemoteMemory(vm, slot, o);
  else await qmp.call('blockdev-del', { 'node-name': remoteMemoryNode(slot) }).catch(() => undefined);
  const entry = await moveTo(vm, { slot, target: { ...target }, sizeMiB, state: 'attaching' }, 'attaching', undefined, o);
  try {
    await plug(qmp, slot, target, o.reconnectDelayS);
    try {
      await runInGuest(vm.guestAgent, `swapon of remote memory slot ${slot} in ${vm.id}`, swaponScript(slot), o.swaponTimeoutMs);
    } catch (err) {
      // A disk the guest never swapped to holds nothing of it: unplugging it is safe.
      await unplug(qmp, slot).catch(() => undefined);
      throw err;
    }
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    await moveTo(vm, entry, 'failed', reason, o);
    throw err instanceof DriverError ? err : new DriverError('REMOTE_MEMORY_FAILED', reason);
  }
  await moveTo(vm, entry, 'active', undefined, o);
}

export async function detachRemoteMemory(vm: QemuVm, slot: number, o: RemoteMemoryOptions): Promise<void> {
  const entry = slotOf(vm, slot);
  const qmp = vm.qmp;
  // A QEMU that is gone took its devices with it.
  if (!qmp || !vm.alive) {
    if (entry) await setSlot(vm, slot, undefined);
    return;
  }
  if (!entry && !(await isPlugged(qmp, slot))) return;
  const detaching = entry ? await moveTo(vm, entry, 'detaching', undefined, o) : undefined;
  try {
    // Never unplug a disk the guest still swaps to: its processes would lose their pages.
    await runInGuest(vm.guestAgent, `swapoff of remote memory slot ${slot} in ${vm.id}`, swapoffScript(slot), o.swapoffTimeoutMs);
  } catch (err) {
    // Still swap in the guest (swapoff found no room for the pages, or the agent did not answer): it stays.
    if (detaching) await moveTo(vm, detaching, 'active', `detach refused: ${err instanceof Error ? err.message : String(err)}`, o);
    throw err;
  }
  await unplug(qmp, slot);
  await setSlot(vm, slot, undefined);
  o.emit(vm);
}

/** After a driver restart: an attach or detach that was under way when it stopped is reported as failed. */
export async function settleInterrupted(vm: QemuVm): Promise<void> {
  const interrupted = (vm.record.remoteMemory ?? []).filter((r) => r.state === 'attaching' || r.state === 'detaching');
  for (const r of interrupted) {
    await setSlot(vm, r.slot, { ...r, state: 'failed', reason: `the driver restarted while it was ${r.state}; attach or detach it again` });
  }
}
