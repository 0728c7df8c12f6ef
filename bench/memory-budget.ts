// memory.budget: how many servers a datacenter needs for one workload, placed at the memory VMs are
// given (no broker: no overcommit) and at the memory they use (the broker balloons idle guests to their
// floor, keeps each host's pressure headroom, and serves peaks by growing in place or from donors' RAM).
// The placement is the real scheduler's (CapacityIndex, 'pack'), the floors the broker's own rule.
//
// The skew, after public VM traces (Azure 2017/2019, Google Borg 2019): most VMs are small and few large
// (sizes 1–64 GiB, weights falling with size); what a guest uses is a share of what it was given, low for
// most (60 % use 15–45 %), middling for some (30 % use 45–75 %), near full for a few (10 % use 75–100 %);
// peaks are short and uncorrelated: each interval 5 % of VMs peak at up to twice their use (capped at
// their size).
import { CapacityIndex } from '../src/control/scheduler/capacity-index.ts';
import { balloonFloorMiB } from '../src/control/memory/mechanisms.ts';
import { defaultMemoryPolicy } from '../src/control/memory/policy.ts';
import type { VmStatusMsg } from '../src/protocol/messages.ts';
import type { VmRow } from '../src/control/store/schema.ts';
import { seeded } from './support/prng.ts';
import { report } from './support/report.ts';

const HOST_MIB = 256 * 1024;
const HOST_CPUS = 128;
const VMS = 7000;
const INTERVALS = 200;
const PEAK_SHARE = 0.05;
const SIZES_GIB = [1, 2, 4, 8, 16, 32, 64] as const;
const SIZE_WEIGHTS = [22, 26, 22, 14, 9, 5, 2];

interface Vm { id: string; sizeMiB: number; usedMiB: number; cpus: number }

function workload(rand: () => number): Vm[] {
  const total = SIZE_WEIGHTS.reduce((a, b) => a + b, 0);
  const size = () => {
    let r = rand() * total;
    for (let i = 0; i < SIZES_GIB.length; i++) if ((r -= SIZE_WEIGHTS[i]) < 0) return SIZES_GIB[i] * 1024;
    return SIZES_GIB[SIZES_GIB.length - 1] * 1024;
  };
  const share = () => {
    const r = rand();
    return r < 0.6 ? 0.15 + rand() * 0.3 : r < 0.9 ? 0.45 + rand() * 0.3 : 0.75 + rand() * 0.25;
  };
  return Array.from({ length: VMS }, (_, i) => {
    const sizeMiB = size();
    return { id: `vm-${i}`, sizeMiB, usedMiB: Math.round(sizeMiB * share()), cpus: Math.max(1, sizeMiB / 4096) };
  });
}

/** The broker's floor for a guest: its policy minimum, and never below its use plus the margin. */
const floorOf = (vm: Vm) =>
  balloonFloorMiB({ memory_mib: vm.sizeMiB } as VmRow, { memoryUsedMiB: vm.usedMiB } as VmStatusMsg, defaultMemoryPolicy)!;

/** Places every VM at `mib(vm)` on `hosts` servers of `usableMiB`; the host of each, or undefined if one does not fit. */
function place(vms: Vm[], hosts: number, usableMiB: number, mib: (vm: Vm) => number): Map<string, string> | undefined {
  const index = new CapacityIndex({ memoryOvercommit: 1 });
  for (let h = 0; h < hosts; h++) index.upsertHost({ id: `h${h}`, name: `h${h}`, schedulable: true, cpus: HOST_CPUS, memoryMiB: usableMiB, labels: {} });
  const where = new Map<string, string>();
  // Largest first, as an operator filling a fleet would: the packing that needs the fewest servers.
  for (const vm of [...vms].sort((a, b) => b.sizeMiB - a.sizeMiB)) {
    const p = index.place({ memoryMiB: mib(vm), cpus: vm.cpus }, 'pack');
    if (!p.ok) return undefined;
    index.assign(vm.id, p.hostId, { memoryMiB: mib(vm), cpus: vm.cpus });
    where.set(vm.id, p.hostId);
  }
  return where;
}

const fewest = (vms: Vm[], usableMiB: number, mib: (vm: Vm) => number, ok: (where: Map<string, string>, hosts: number) => boolean = () => true) => {
  let hosts = Math.ceil(vms.reduce((n, v) => n + mib(v), 0) / usableMiB);
  for (;; hosts++) {
    const where = place(vms, hosts, usableMiB, mib);
    if (where && ok(where, hosts)) return { hosts, where };
  }
};

/** Peaks over time: served by growing into the host's free RAM, else from donors above their reserve. */
function peaks(vms: Vm[], where: Map<string, string>, hosts: number, rand: () => number) {
  const base = new Map<string, number>();
  for (const vm of vms) base.set(where.get(vm.id)!, (base.get(where.get(vm.id)!) ?? 0) + floorOf(vm));
  let grownMiB = 0, remoteMiB = 0, unservedMiB = 0, remotePeakMiB = 0;
  for (let t = 0; t < INTERVALS; t++) {
    const used = new Map(base);
    let donorsLeft = 0;
    const extra: { host: string; need: number }[] = [];
    for (const vm of vms) {
      if (rand() >= PEAK_SHARE) continue;
      const peak = Math.min(vm.sizeMiB, Math.round(vm.usedMiB * (1 + rand())));
      const need = peak + defaultMemoryPolicy.guestMarginMiB - floorOf(vm);
      if (need > 0) extra.push({ host: where.get(vm.id)!, need });
    }
    const remote: number[] = [];
    for (const e of extra) {
      const free = HOST_MIB - (used.get(e.host) ?? 0);
      // The broker's own rules: a VM grows into what its host can spare above the pressure threshold
      // (mechanisms.ts spareMiB); the rest comes from donors, each above its reserve.
      const grow = Math.max(0, Math.min(e.need, free - HOST_MIB * defaultMemoryPolicy.actBelowFraction));
      used.set(e.host, (used.get(e.host) ?? 0) + grow);
      grownMiB += grow;
      if (e.need > grow) remote.push(e.need - grow);
    }
    for (let h = 0; h < hosts; h++) donorsLeft += Math.max(0, HOST_MIB * (1 - defaultMemoryPolicy.donorReserveFraction) - (used.get(`h${h}`) ?? 0));
    const wanted = remote.reduce((a, b) => a + b, 0);
    remoteMiB += Math.min(wanted, donorsLeft);
    unservedMiB += Math.max(0, wanted - donorsLeft);
    remotePeakMiB = Math.max(remotePeakMiB, Math.min(wanted, donorsLeft));
  }
  return { grownMiB, remoteMiB, unservedMiB, remotePeakMiB };
}

export async function memoryBudget(): Promise<void> {
  const vms = workload(seeded(16));
  const params = { vms: VMS, hostGiB: HOST_MIB / 1024, intervals: INTERVALS };
  const without = fewest(vms, HOST_MIB, (vm) => vm.sizeMiB);
  // With the broker a host is filled at the guests' floors up to its pressure threshold, and more servers are
  // added until every peak of every interval is served.
  const usable = Math.floor(HOST_MIB * (1 - defaultMemoryPolicy.actBelowFraction));
  const withBroker = fewest(vms, usable, floorOf, (where, hosts) => peaks(vms, where, hosts, seeded(7)).unservedMiB === 0);
  const served = peaks(vms, withBroker.where, withBroker.hosts, seeded(7));
  const given = vms.reduce((n, v) => n + v.sizeMiB, 0);
  const usedTotal = vms.reduce((n, v) => n + v.usedMiB, 0);
  report('memory.budget.servers_without_broker', without.hosts, 'servers', params);
  report('memory.budget.servers_with_broker', withBroker.hosts, 'servers', params);
  report('memory.budget.servers_saved', (1 - withBroker.hosts / without.hosts) * 100, '%', params);
  report('memory.budget.used_of_given', (usedTotal / given) * 100, '%', params);
  report('memory.budget.peaks_grown_in_place', served.grownMiB / Math.max(1, served.grownMiB + served.remoteMiB) * 100, '%', params);
  report('memory.budget.remote_peak', served.remotePeakMiB / 1024, 'GiB', params);
}
