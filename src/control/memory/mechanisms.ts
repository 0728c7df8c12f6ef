// How a VM can get more memory, cheapest first: grow into its host's free memory, balloon its neighbours
// down to make room (reclaim), plug in a donor's RAM as swap (remote), or move to a host with room
// (migrate). Pure decisions over what the hosts report; the broker carries them out.
import type { VmStatusMsg } from '../../protocol/messages.ts';
import type { ErrorCode } from '../errors.ts';
import type { LiveHost } from '../features/hosts/registry.ts';
import type { CapacityIndex } from '../scheduler/capacity-index.ts';
import type { LeaseKind, LeaseMechanism, VmRow } from '../store/schema.ts';
import type { Reclaimed } from './plan.ts';
import type { MemoryPolicy } from './policy.ts';

export interface MechanismInput {
  vm: VmRow;
  sizeMiB: number;
  kind: LeaseKind;
  asked: LeaseMechanism | 'auto';
  donorHostId?: string | null;
  hosts: LiveHost[];
  /** The rows of the VMs running on the VM's host, the VM itself included. */
  neighbours: VmRow[];
  capacity: CapacityIndex;
  policy: MemoryPolicy;
}

export type Choice =
  | { ok: true; mechanism: LeaseMechanism; targetMiB?: number; neighbours?: Reclaimed[]; donorHostId?: string; toHostId?: string }
  | { ok: false; code: ErrorCode; reason: string };

const refuse = (code: ErrorCode, reason: string): Choice => ({ ok: false, code, reason });

/** The memory the guest has now: its target once applied, else its boot memory. */
export const currentMiB = (vm: VmRow, seen?: VmStatusMsg) => seen?.memoryActualMiB || vm.memory_target_mib || vm.memory_mib;

/** What a host can give without going under pressure itself. */
export const spareMiB = (h: LiveHost, keepFraction: number) => h.memoryFreeMiB - Math.ceil(h.row.memory_mib * keepFraction);

export const usable = (h: LiveHost) => !!h.connection && h.row.state === 'ready' && h.row.maintenance !== 1;

/** The lowest a guest may be ballooned to: its policy minimum, and never below what it uses plus a margin. */
export function balloonFloorMiB(vm: VmRow, seen: VmStatusMsg | undefined, policy: MemoryPolicy): number | undefined {
  // Without balloon stats nobody knows what the guest uses: it is not ballooned at all.
  if (seen?.memoryUsedMiB === undefined) return undefined;
  return Math.max(Math.ceil(vm.memory_mib * policy.vmMinFraction), seen.memoryUsedMiB + policy.guestMarginMiB);
}

/**
 * Neighbours to balloon down for `needMiB`, those with the most slack first; undefined when they cannot give
 * enough, unless `partial` (memory pressure takes what it can get).
 */
export function planReclaim(host: LiveHost, others: VmRow[], needMiB: number, policy: MemoryPolicy, partial = false): Reclaimed[] | undefined {
  const slack = others.flatMap((vm) => {
    const seen = host.vms.get(vm.id);
    const floor = balloonFloorMiB(vm, seen, policy);
    if (!seen || seen.state !== 'running' || floor === undefined) return [];
    const give = currentMiB(vm, seen) - floor;
    return give > 0 ? [{ vm, now: currentMiB(vm, seen), give }] : [];
  }).sort((a, b) => b.give - a.give);
  const out: Reclaimed[] = [];
  let left = needMiB;
  for (const s of slack) {
    if (left <= 0) break;
    const take = Math.min(s.give, left);
    out.push({ vmId: s.vm.id, previousTargetMiB: s.vm.memory_target_mib, toMiB: s.now - take });
    left -= take;
  }
  return left <= 0 || partial ? out : undefined;
}

/** A donor for `sizeMiB`: the named one if it can, else the ready host with the most to spare. */
export function pickDonor(hosts: LiveHost[], borrowerHostId: string, sizeMiB: number, policy: MemoryPolicy, named?: string | null): LiveHost | undefined {
  const able = (h: LiveHost) => usable(h) && h.row.id !== borrowerHostId && spareMiB(h, policy.donorReserveFraction) >= sizeMiB;
  if (named) return hosts.find((h) => h.row.id === named && able(h));
  return hosts.filter(able).sort((a, b) => spareMiB(b, policy.donorReserveFraction) - spareMiB(a, policy.donorReserveFraction))[0];
}

/** Where the VM could move with its memory grown by `sizeMiB`. */
export function placeGrown(vm: VmRow, sizeMiB: number, capacity: CapacityIndex) {
  return capacity.place({
    memoryMiB: vm.memory_mib + sizeMiB, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>,
    antiAffinity: vm.anti_affinity, exclude: vm.host_id ? [vm.host_id] : [],
  }, 'spread');
}

/** The mechanism that gives the VM `sizeMiB`, the one asked for or the cheapest that applies. */
export function chooseMechanism(input: MechanismInput): Choice {
  const { vm, sizeMiB, policy } = input;
  const host = input.hosts.find((h) => h.row.id === vm.host_id);
  if (!host || !usable(host)) return refuse('HOST_NOT_READY', `the host of VM ${vm.name} is not ready`);
  const seen = host.vms.get(vm.id);
  const target = currentMiB(vm, seen) + sizeMiB;
  const withinMax = target <= vm.max_memory_mib;
  const aboveMax = `VM ${vm.name} would hold ${target} MiB, above its maxMemoryMiB ${vm.max_memory_mib}`;
  // A permanent lease is counted in the VM's spec: its host must have room for it on paper, not only now.
  const fitsInPlace = input.kind === 'temporary' || (input.capacity.usage(host.row.id)?.freeMiB ?? 0) >= sizeMiB;
  const room = spareMiB(host, policy.actBelowFraction);
  const others = input.neighbours.filter((n) => n.id !== vm.id);

  const grow = (): Choice => {
    if (!withinMax) return refuse('UNSUPPORTED', aboveMax);
    if (!fitsInPlace) return refuse('NO_CAPACITY', `host ${host.row.name} has no room for ${sizeMiB} MiB more for good`);
    if (room < sizeMiB) return refuse('NO_CAPACITY', `host ${host.row.name} can spare ${Math.max(0, room)} MiB, not ${sizeMiB} MiB`);
    return { ok: true, mechanism: 'grow', targetMiB: target };
  };
  const reclaim = (): Choice => {
    if (input.kind === 'permanent') return refuse('UNSUPPORTED', 'a permanent lease cannot live on memory ballooned out of other VMs');
    if (!withinMax) return refuse('UNSUPPORTED', aboveMax);
    const neighbours = planReclaim(host, others, sizeMiB - Math.max(0, room), policy);
    if (!neighbours) return refuse('NO_CAPACITY', `the other VMs on host ${host.row.name} cannot give ${sizeMiB} MiB without going below what they use`);
    return { ok: true, mechanism: 'reclaim', targetMiB: target, neighbours };
  };
  const remote = (): Choice => {
    if (input.kind === 'permanent') return refuse('UNSUPPORTED', 'a permanent lease never depends on a donor; use grow or migrate');
    const donor = pickDonor(input.hosts, host.row.id, sizeMiB, policy, input.donorHostId);
    if (!donor) return refuse('NO_CAPACITY', input.donorHostId ? `host ${input.donorHostId} cannot lend ${sizeMiB} MiB now` : `no host can lend ${sizeMiB} MiB without going below its reserve`);
    return { ok: true, mechanism: 'remote', donorHostId: donor.row.id };
  };
  const migrate = (): Choice => {
    if (!withinMax) return refuse('UNSUPPORTED', aboveMax);
    if (vm.replicated) return refuse('UNSUPPORTED', `VM ${vm.name} is on replicated storage, which does not live-migrate`);
    const placed = placeGrown(vm, sizeMiB, input.capacity);
    if (!placed.ok) return refuse('NO_CAPACITY', placed.reason);
    return { ok: true, mechanism: 'migrate', targetMiB: target, toHostId: placed.hostId };
  };
  const by: Record<LeaseMechanism, () => Choice> = { grow, reclaim, remote, migrate };
  if (input.asked !== 'auto') return by[input.asked]();
  const tried = (['grow', 'reclaim', 'remote', 'migrate'] as const).map((m) => by[m]());
  return tried.find((c) => c.ok) ?? refuse('NO_CAPACITY', `no way to give VM ${vm.name} ${sizeMiB} MiB: ${tried.map((c) => (c.ok ? '' : c.reason)).join('; ')}`);
}
