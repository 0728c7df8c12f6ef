// The scheduler's in-memory picture of every host's free capacity, kept sorted by free memory so that a
// placement on 10,000 hosts is a binary search and a short scan, not a pass over all of them.

export interface HostCapacityInput {
  id: string;
  name: string;
  schedulable: boolean;
  /** Why the host is not schedulable (state, maintenance), for placement failure messages. */
  notSchedulableReason?: string;
  cpus: number;
  memoryMiB: number;
  labels: Record<string, string>;
}

interface HostEntry extends HostCapacityInput {
  usedMiB: number;
  usedCpus: number;
  groups: Map<string, number>;
  freeMiB: number;
}

export interface PlacementRequest {
  memoryMiB: number;
  cpus: number;
  /** Labels the host must carry, e.g. {zone: "a"}. */
  labels?: Record<string, string>;
  /** VMs of one anti-affinity group never share a host. */
  antiAffinity?: string | null;
  /** Hosts to leave out (the source of a migration). */
  exclude?: string[];
}

export type PlacementPolicy = 'spread' | 'pack';

export type Placement = { ok: true; hostId: string } | { ok: false; reason: string; considered: number };

interface Assignment {
  hostId: string;
  memoryMiB: number;
  cpus: number;
  group: string | null;
}

export interface CapacityIndexOptions {
  /** Memory the scheduler may promise per MiB of host RAM (1.0 = none overcommitted). */
  memoryOvercommit?: number;
  cpuOvercommit?: number;
}

export class CapacityIndex {
  private readonly hosts = new Map<string, HostEntry>();
  /** Schedulable hosts, ascending by (freeMiB, id). */
  private readonly sorted: HostEntry[] = [];
  private readonly assignments = new Map<string, Assignment>();
  readonly memoryOvercommit: number;
  readonly cpuOvercommit: number;

  constructor(opts: CapacityIndexOptions = {}) {
    this.memoryOvercommit = opts.memoryOvercommit ?? 1.0;
    this.cpuOvercommit = opts.cpuOvercommit ?? 4;
  }

  get size(): number {
    return this.hosts.size;
  }

  upsertHost(input: HostCapacityInput): void {
    const existing = this.hosts.get(input.id);
    if (existing) this.unsort(existing);
    const entry: HostEntry = existing
      ? Object.assign(existing, input)
      : { ...input, usedMiB: 0, usedCpus: 0, groups: new Map(), freeMiB: 0 };
    entry.freeMiB = Math.floor(entry.memoryMiB * this.memoryOvercommit) - entry.usedMiB;
    this.hosts.set(entry.id, entry);
    this.resort(entry);
  }

  removeHost(id: string): void {
    const entry = this.hosts.get(id);
    if (!entry) return;
    this.unsort(entry);
    this.hosts.delete(id);
  }

  /** Records that a VM holds capacity on a host (placed, running, or the target of a migration). */
  assign(vmId: string, hostId: string, req: { memoryMiB: number; cpus: number; antiAffinity?: string | null }): void {
    this.release(vmId);
    const group = req.antiAffinity ?? null;
    this.assignments.set(vmId, { hostId, memoryMiB: req.memoryMiB, cpus: req.cpus, group });
    const entry = this.hosts.get(hostId);
    if (!entry) return;
    this.adjust(entry, req.memoryMiB, req.cpus, group, +1);
  }

  release(vmId: string): void {
    const a = this.assignments.get(vmId);
    if (!a) return;
    this.assignments.delete(vmId);
    const entry = this.hosts.get(a.hostId);
    if (entry) this.adjust(entry, -a.memoryMiB, -a.cpus, a.group, -1);
  }

  hostOf(vmId: string): string | undefined {
    return this.assignments.get(vmId)?.hostId;
  }

  usage(hostId: string): { usedMiB: number; usedCpus: number; freeMiB: number } | undefined {
    const e = this.hosts.get(hostId);
    return e && { usedMiB: e.usedMiB, usedCpus: e.usedCpus, freeMiB: e.freeMiB };
  }

  /** The largest VM memory any host could hold when empty: requests above it can never be placed. */
  /** The most CPUs one VM could get on any host: a VM wanting more can never be placed. */
  largestHostCpus(): number {
    let max = 0;
    for (const h of this.hosts.values()) max = Math.max(max, Math.floor(h.cpus * this.cpuOvercommit));
    return max;
  }

  largestHostMiB(): number {
    let max = 0;
    for (const h of this.hosts.values()) max = Math.max(max, Math.floor(h.memoryMiB * this.memoryOvercommit));
    return max;
  }

  place(req: PlacementRequest, policy: PlacementPolicy = 'spread'): Placement {
    const s = this.sorted;
    // Hosts below this index cannot hold the VM's memory.
    const first = lowerBound(s, req.memoryMiB);
    if (policy === 'pack') {
      for (let i = first; i < s.length; i++) if (this.fits(s[i], req)) return { ok: true, hostId: s[i].id };
    } else {
      for (let i = s.length - 1; i >= first; i--) if (this.fits(s[i], req)) return { ok: true, hostId: s[i].id };
    }
    return { ok: false, ...this.explain(req) };
  }

  private fits(h: HostEntry, req: PlacementRequest): boolean {
    if (h.freeMiB < req.memoryMiB) return false;
    if (h.usedCpus + req.cpus > h.cpus * this.cpuOvercommit) return false;
    if (req.exclude?.includes(h.id)) return false;
    if (req.antiAffinity && (h.groups.get(req.antiAffinity) ?? 0) > 0) return false;
    if (req.labels) for (const [k, v] of Object.entries(req.labels)) if (h.labels[k] !== v) return false;
    return true;
  }

  /** A placement failed: count why, host by host (rare, so a full pass is fine). */
  private explain(req: PlacementRequest): { reason: string; considered: number } {
    const why = new Map<string, number>();
    const bump = (k: string) => why.set(k, (why.get(k) ?? 0) + 1);
    let considered = 0;
    for (const h of this.hosts.values()) {
      if (req.exclude?.includes(h.id)) continue;
      considered++;
      if (!h.schedulable) bump(h.notSchedulableReason ?? 'not schedulable');
      else if (h.freeMiB < req.memoryMiB) bump('too little free memory');
      else if (h.usedCpus + req.cpus > h.cpus * this.cpuOvercommit) bump('too few free CPUs');
      else if (req.antiAffinity && (h.groups.get(req.antiAffinity) ?? 0) > 0) bump(`already runs a VM of anti-affinity group ${req.antiAffinity}`);
      else bump('labels do not match');
    }
    const parts = [...why].map(([k, n]) => `${n} ${k}`);
    const reason =
      considered === 0
        ? 'no host is registered'
        : `no host has ${req.memoryMiB} MiB and ${req.cpus} CPUs free: ${considered} host${considered === 1 ? '' : 's'} considered (${parts.join(', ')})`;
    return { reason, considered };
  }

  private adjust(entry: HostEntry, memoryMiB: number, cpus: number, group: string | null, groupDelta: number): void {
    this.unsort(entry);
    entry.usedMiB += memoryMiB;
    entry.usedCpus += cpus;
    if (group) {
      const n = (entry.groups.get(group) ?? 0) + groupDelta;
      if (n > 0) entry.groups.set(group, n);
      else entry.groups.delete(group);
    }
    entry.freeMiB = Math.floor(entry.memoryMiB * this.memoryOvercommit) - entry.usedMiB;
    this.resort(entry);
  }

  private unsort(entry: HostEntry): void {
    const i = indexOf(this.sorted, entry);
    if (i >= 0) this.sorted.splice(i, 1);
  }

  private resort(entry: HostEntry): void {
    if (!entry.schedulable) return;
    this.sorted.splice(position(this.sorted, entry), 0, entry);
  }
}

const compare = (a: HostEntry, b: HostEntry) => a.freeMiB - b.freeMiB || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function lowerBound(s: HostEntry[], freeMiB: number): number {
  let lo = 0;
  let hi = s.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (s[mid].freeMiB < freeMiB) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Where `entry` stands, or would stand, in the sorted list. */
function position(s: HostEntry[], entry: HostEntry): number {
  let lo = 0;
  let hi = s.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compare(s[mid], entry) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function indexOf(s: HostEntry[], entry: HostEntry): number {
  const i = position(s, entry);
  return s[i] === entry ? i : -1;
}
