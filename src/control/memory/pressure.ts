// Memory pressure: a host whose available memory falls below the policy's threshold gets some back before
// its OOM killer would act. The broker balloons the VMs with the most slack toward their floor; when it is
// urgent and that is not enough, it moves a VM off. What it ballooned it gives back once the host has room.
import type { Logger } from '../../lib/logger.ts';
import type { LiveHost } from '../features/hosts/registry.ts';
import type { LeaseStore } from '../features/memory/store.ts';
import type { VmStore } from '../features/vms/store.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { VmRow } from '../store/schema.ts';
import { currentMiB, planReclaim, usable } from './mechanisms.ts';
import type { MemoryPolicy } from './policy.ts';
import type { VmTargets } from './vm-targets.ts';

export interface PressureDeps {
  registry: HostRegistry;
  vms: VmStore;
  leases: LeaseStore;
  events: EventService;
  targets: VmTargets;
  policy: MemoryPolicy;
  log: Logger;
  /** Moves a VM to wherever the scheduler finds room. */
  migrate(vmId: string): Promise<unknown>;
}

export function createPressureRelief(deps: PressureDeps) {
  const { policy } = deps;
  /** When the broker acted on each host lately (the rate limit). */
  const acted = new Map<string, number[]>();
  /** VMs ballooned for pressure, with the target they had. Kept in memory: a restart leaves them as they are. */
  const ballooned = new Map<string, { hostId: string; previousTargetMiB: number | null; givenMiB: number }>();

  const mayAct = (hostId: string) => {
    const now = Date.now();
    const recent = (acted.get(hostId) ?? []).filter((t) => now - t < 60_000);
    acted.set(hostId, recent);
    return recent.length < policy.actionsPerHostPerMinute;
  };
  const record = (hostId: string) => acted.get(hostId)?.push(Date.now());

  async function relieve(h: LiveHost, rows: VmRow[], leased: Set<string>): Promise<void> {
    const total = h.row.memory_mib;
    const free = h.memoryFreeMiB;
    // Aim a little above the threshold, so that the next check does not find it just below again.
    const needMiB = Math.ceil(total * policy.actBelowFraction * 1.25) - free;
    const candidates = rows.filter((r) => !leased.has(r.id) && !ballooned.has(r.id));
    const plan = planReclaim(h, candidates, needMiB, policy, true) ?? [];
    let reclaimedMiB = 0;
    for (const n of plan) {
      const vm = rows.find((r) => r.id === n.vmId)!;
      const given = currentMiB(vm, h.vms.get(vm.id)) - n.toMiB;
      ballooned.set(n.vmId, { hostId: h.row.id, previousTargetMiB: n.previousTargetMiB, givenMiB: given });
      await deps.targets.set(n.vmId, n.toMiB);
      reclaimedMiB += given;
    }
    if (plan.length) {
      record(h.row.id);
      await deps.events.emit({
        type: 'memory.pressure.reclaimed', objectKind: 'host', objectId: h.row.id,
        message: `host ${h.row.name} had ${free} MiB of ${total} MiB available; ${reclaimedMiB} MiB ballooned out of ${plan.length} VM(s)`,
        data: { freeMiB: free, reclaimedMiB, vms: plan.map((p) => ({ vmId: p.vmId, toMiB: p.toMiB })) },
      });
    }
    const urgent = free < total * policy.urgentBelowFraction;
    if (!urgent || reclaimedMiB >= needMiB || !mayAct(h.row.id)) return;
    // The smallest VM that covers what is missing moves (cheapest to copy); else the largest there is.
    const missing = needMiB - reclaimedMiB;
    const movable = rows.filter((r) => !r.replicated && !leased.has(r.id)).sort((a, b) => a.memory_mib - b.memory_mib);
    const pick = movable.find((r) => r.memory_mib >= missing) ?? movable[movable.length - 1];
    if (!pick) return;
    try {
      await deps.migrate(pick.id);
      record(h.row.id);
      await deps.events.emit({
        type: 'memory.pressure.migrating', objectKind: 'host', objectId: h.row.id,
        message: `host ${h.row.name} is nearly out of memory (${free} MiB available): VM ${pick.name} moves off`,
        data: { freeMiB: free, vmId: pick.id },
      });
    } catch (err) {
      deps.log.warn({ err, hostId: h.row.id, vmId: pick.id }, 'could not move a VM off a host short of memory');
    }
  }

  /** Gives ballooned VMs their memory back, one a check, while the host stays clear of the threshold. */
  async function giveBack(h: LiveHost): Promise<void> {
    const headroom = h.memoryFreeMiB - Math.ceil(h.row.memory_mib * policy.actBelowFraction * 1.5);
    for (const [vmId, b] of ballooned) {
      if (b.hostId !== h.row.id || b.givenMiB > headroom) continue;
      const state = await deps.targets.restore(vmId, b.previousTargetMiB);
      if (state !== 'waiting') ballooned.delete(vmId);
      return;
    }
  }

  return {
    async check(): Promise<void> {
      const leased = new Set((await deps.leases.open()).map((l) => l.vm_id));
      for (const h of deps.registry.all()) {
        if (!usable(h) || h.row.memory_mib <= 0) continue;
        for (const [vmId, b] of ballooned) if (b.hostId === h.row.id && !h.vms.has(vmId)) ballooned.delete(vmId);
        if (h.memoryFreeMiB >= h.row.memory_mib * policy.actBelowFraction) {
          await giveBack(h);
          continue;
        }
        if (!mayAct(h.row.id)) continue;
        const rows = (await deps.vms.list({ limit: 10_000, hostId: h.row.id })).filter((r) => r.phase === 'running' && r.host_id === h.row.id);
        await relieve(h, rows, leased);
      }
    },
    /** VMs the broker ballooned for pressure (tests, metrics). */
    ballooned: () => [...ballooned.keys()],
  };
}
