// The broker moves memory through a VM's memory target, the same spec field `POST /vms/{id}/memory` sets:
// the VM controller applies it (balloon, virtio-mem) and applies it again after a restart or a migration.
import type { LiveHost } from '../features/hosts/registry.ts';
import type { VmStore } from '../features/vms/store.ts';
import type { VmRow } from '../store/schema.ts';

export type TargetState = 'reached' | 'waiting' | 'gone';

export function createVmTargets(deps: { store: VmStore; host: (id: string) => LiveHost | undefined; touched: (vmId: string) => void }) {
  const { store } = deps;

  /** Writes the VM's target (compare-and-set, re-read on a lost race); the VM as it is after. */
  async function set(vmId: string, targetMiB: number | null, also: Partial<Pick<VmRow, 'memory_mib'>> = {}): Promise<VmRow | undefined> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const vm = await store.get(vmId);
      if (!vm) return undefined;
      if (vm.memory_target_mib === targetMiB && (also.memory_mib === undefined || vm.memory_mib === also.memory_mib)) return vm;
      const row = await store.writeSpec(vm, { memory_target_mib: targetMiB, ...also });
      if (row) {
        deps.touched(vmId);
        return row;
      }
    }
    throw new Error(`VM ${vmId} keeps changing; its memory target could not be written`);
  }

  /** What the guest holds now, as its host reports it (undefined when it does not run). */
  function held(vm: VmRow): number | undefined {
    const seen = vm.host_id ? deps.host(vm.host_id)?.vms.get(vm.id) : undefined;
    return seen && (seen.state === 'running' || seen.state === 'paused') ? seen.memoryActualMiB : undefined;
  }

  /** Asks for `targetMiB` and says whether the guest holds it yet; a VM that does not run is gone. */
  async function reach(vmId: string, targetMiB: number): Promise<TargetState> {
    const vm = await set(vmId, targetMiB);
    if (!vm || vm.deleting || vm.desired_power !== 'running' || vm.phase === 'stopped' || vm.phase === 'failed') return 'gone';
    // Its host is away for a moment (control restarted, the agent reconnects), or it moves: wait for it.
    if (vm.phase !== 'running') return 'waiting';
    return held(vm) === targetMiB && vm.memory_applied_mib === targetMiB ? 'reached' : 'waiting';
  }

  /**
   * Puts back the target a VM had before (null: its boot memory). A null target is not applied by itself,
   * so the guest is first brought back to its boot memory, then the target cleared.
   */
  async function restore(vmId: string, previousMiB: number | null): Promise<TargetState> {
    const vm = await store.get(vmId);
    if (!vm) return 'gone';
    if (vm.memory_target_mib === previousMiB) return 'reached';
    if (vm.phase !== 'running') {
      await set(vmId, previousMiB);
      return 'reached';
    }
    const want = previousMiB ?? vm.memory_mib;
    const state = await reach(vmId, want);
    if (state !== 'reached') return state;
    if (previousMiB === null) await set(vmId, null);
    return 'reached';
  }

  return { set, reach, restore, held };
}

export type VmTargets = ReturnType<typeof createVmTargets>;
