// scheduler.placements: place() + assign(), as the VM reconciler does them, on 1,000 and 10,000 hosts.
import { CapacityIndex, type PlacementPolicy, type PlacementRequest } from '../src/control/scheduler/capacity-index.ts';
import { pick, seeded } from './support/prng.ts';
import { report } from './support/report.ts';

const HOST_MEMORY_MIB = [65_536, 131_072, 262_144, 524_288] as const;
const HOST_CPUS = [32, 64, 128] as const;
const ZONES = ['a', 'b', 'c'] as const;
const VM_MEMORY_MIB = [512, 1024, 2048, 4096, 8192, 16_384] as const;
const PLACEMENTS = 20_000;
/** A case stops early past this, so a slow index cannot stall the run. */
const MAX_CASE_MS = 5000;

function fill(index: CapacityIndex, hosts: number, rand: () => number): void {
  for (let i = 0; i < hosts; i++) {
    index.upsertHost({
      id: `host-${String(i).padStart(5, '0')}`,
      name: `host-${i}`,
      // A few hosts are down or in maintenance, as in any real fleet.
      schedulable: rand() >= 0.02,
      notSchedulableReason: 'unreachable',
      cpus: pick(rand, HOST_CPUS),
      memoryMiB: pick(rand, HOST_MEMORY_MIB),
      labels: i % 10 === 0 ? { zone: pick(rand, ZONES), gpu: 'yes' } : { zone: pick(rand, ZONES) },
    });
  }
}

/** Mostly plain VMs; some want a zone, a GPU host, or an anti-affinity group. Labels are always an object, as the reconciler parses them from the row. */
function requests(n: number, rand: () => number): PlacementRequest[] {
  const out: PlacementRequest[] = [];
  for (let i = 0; i < n; i++) {
    const r = rand();
    out.push({
      memoryMiB: pick(rand, VM_MEMORY_MIB),
      cpus: 1 + Math.floor(rand() * 8),
      labels: r < 0.2 ? { zone: pick(rand, ZONES) } : r < 0.25 ? { gpu: 'yes' } : {},
      antiAffinity: r >= 0.25 && r < 0.3 ? `group-${i % 50}` : null,
    });
  }
  return out;
}

function runCase(hosts: number, policy: PlacementPolicy, n: number): { placed: number; failed: number; seconds: number; cpuSeconds: number } {
  const index = new CapacityIndex();
  fill(index, hosts, seeded(hosts));
  const reqs = requests(n, seeded(7));
  let placed = 0;
  let failed = 0;
  const started = performance.now();
  const cpu0 = process.cpuUsage();
  const deadline = started + MAX_CASE_MS;
  for (let i = 0; i < reqs.length; i++) {
    const req = reqs[i];
    const p = index.place(req, policy);
    if (p.ok) {
      index.assign(`vm-${i}`, p.hostId, { memoryMiB: req.memoryMiB, cpus: req.cpus, antiAffinity: req.antiAffinity });
      placed++;
    } else failed++;
    if ((i & 255) === 255 && performance.now() > deadline) break;
  }
  const cpu = process.cpuUsage(cpu0);
  return { placed, failed, seconds: (performance.now() - started) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

export async function schedulerPlacements(): Promise<void> {
  // Warm the JIT up so the first measured case is not penalised.
  runCase(1000, 'spread', 5000);
  runCase(1000, 'pack', 5000);
  for (const hosts of [1000, 10_000]) {
    for (const policy of ['spread', 'pack'] as const) {
      const r = runCase(hosts, policy, PLACEMENTS);
      const attempts = r.placed + r.failed;
      // Per CPU second too: on a shared machine other processes stretch the wall clock, not the CPU time.
      report('scheduler.placements', attempts / r.seconds, '1/s', { hosts, policy, placements: attempts, failed: r.failed, perCpuSecond: Math.round(attempts / r.cpuSeconds) });
    }
  }
}
