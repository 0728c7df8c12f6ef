// ha.failover: a host of a real three-host QEMU cluster on loopback dies (SIGKILL of its agent's process group,
// its QEMUs and its watchdog) and its HA guest, on shared or on replicated storage, comes back on another host.
// Measured end to end, from the kill until the guest runs and stamps its disk there, and per step (detection,
// fencing, restart), with the product's default host lease and with a short one; against the floor of the
// same run (the lease plus a plain create-to-running of the same guest on the same cluster).
import { loadavg } from 'node:os';
import { requireGuest } from '../src/drivers/qemu/test-support.ts';
import { acknowledgedStamps, stampSwitch } from '../test/support/stamps.ts';
import { type ControlTimings, type QemuCluster, imageDirsOf, startQemuCluster } from './support/qemu-cluster.ts';
import { quantile, report } from './support/report.ts';
import { waitFor } from './support/wait.ts';

/**
 * Where the HA guest's disk lives: `shared`, the shared pool every host sees; `replicated`, on its host with a
 * synchronous copy on a second host, where HA restarts it (from a copy in step only). Every figure is measured
 * for each kind listed.
 */
export type FailoverStorage = 'shared' | 'replicated';
export const STORAGES: FailoverStorage[] = ['shared', 'replicated'];

const HOSTS = ['h1', 'h2', 'h3'];
/** Host deaths per storage kind and timings (AWAN_BENCH_HA_ROUNDS, 1–3): one guest takes them all, and HA restarts a VM at most three times an hour. */
const ROUNDS = Math.min(3, Math.max(1, Number(process.env.AWAN_BENCH_HA_ROUNDS ?? 3) || 3));
const FLOOR_RUNS = 3;
const IMAGE = 'bench-stamp-guest';
const READY_TEXT = 'AWAN-BOOTED';
const VM_MEMORY_MIB = 128;
/** The new boot's stamps on the new host's console before the guest counts as back: its counter advanced. */
const STAMPS_BACK = 2;
const POLL_MS = 100;
/** How much later than control's `running` this bench may see a ready text through its own polling. */
const EARLY_TOLERANCE_MS = 500;
const BOOT_TIMEOUT_MS = 180_000;
const FAILOVER_TIMEOUT_MS = 180_000;
/** A replicated disk's copy in step (first made, or rebuilt on a third host after a failover). */
const REPLICA_SYNC_TIMEOUT_MS = 180_000;

/** `awan serve`'s own defaults, started without the flags; the numbers only label the figures. */
const SERVE_DEFAULTS = { hostLeaseMs: 5000, failoverMarginMs: 1500, heartbeatMs: 1000 } as const;
const TIMINGS: { name: string; flags: ControlTimings; effective: Required<ControlTimings> }[] = [
  { name: 'defaults', flags: {}, effective: SERVE_DEFAULTS },
  { name: 'tuned', flags: { hostLeaseMs: 2000, failoverMarginMs: 1000, heartbeatMs: 500 }, effective: { hostLeaseMs: 2000, failoverMarginMs: 1000, heartbeatMs: 500 } },
];

interface Vm {
  id: string;
  phase: string;
  hostId: string | null;
}

interface EventRow {
  seq: number;
  at: string;
  type: string;
}

/** One host death, each instant in ms of this machine's clock (control runs on it too). */
interface Round {
  from: string;
  to: string;
  killedAt: number;
  failedAt: number;
  releasedAt: number;
  /** Control says running again (the HA manager's vm.ha.restarted event). */
  runningAt: number;
  /** The ready text of a new boot on the new host's console (polled). */
  readyAt: number;
  /** That boot's stamps advanced (STAMPS_BACK acknowledged writes). */
  stampingAt: number;
  /** Replicated storage: the host of the disk's copy when the host died (where HA must restart the guest). */
  copyOn?: string;
}

interface BootSample {
  runningS: number;
  readyS: number;
  stampingS: number;
}

const s = (ms: number) => Math.round(ms) / 1000;
const s2 = (x: number) => Math.round(x * 100) / 100;
const stats = (xs: number[]) => ({ min: Math.min(...xs), median: quantile(xs, 0.5), max: Math.max(...xs) });

const STAMP_START = /AWAN-STAMP-START ([0-9a-f]{32})/g;

/**
 * The boots a console text shows (the stamper's start line names each one), with the highest stamp each had
 * acknowledged. Boot ids tell a new boot from an old one: an agent killed while it held the console copies the
 * earlier boot's output into the history again when the VM next starts on that host, ready text included.
 */
function bootsIn(text: string): Map<string, number> {
  const boots = new Map<string, number>();
  for (const m of text.matchAll(STAMP_START)) boots.set(m[1], boots.get(m[1]) ?? 0);
  for (const st of acknowledgedStamps(text)) boots.set(st.bootId, Math.max(boots.get(st.bootId) ?? 0, st.counter));
  return boots;
}

/** Whether a new boot printed the ready text: it must come after every line of the boots in `known`. */
function newBootReady(text: string, known: Set<string>): boolean {
  let after = 0;
  for (const boot of known) after = Math.max(after, text.lastIndexOf(boot) + 1);
  return text.indexOf(READY_TEXT, after) >= 0;
}

async function vmOf(c: QemuCluster, id: string): Promise<Vm> {
  const res = await c.api<Vm>('GET', `/api/v1/vms/${id}`);
  if (res.status !== 200) throw new Error(`GET vm ${id}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

async function hostNameOf(c: QemuCluster, hostId: string | null): Promise<string | undefined> {
  return hostId ? (await c.hosts()).find((h) => h.id === hostId)?.name : undefined;
}

async function eventsOf(c: QemuCluster, vmId: string): Promise<EventRow[]> {
  return (await c.api<{ items: EventRow[] }>('GET', `/api/v1/events?object=${vmId}&limit=1000`)).body.items;
}

/**
 * Follows a boot of the guest that is not among `known`: when control says it runs on a host (other than
 * `not`), when the new boot shows on that host's console, when its stamps advance. Polls until all three.
 */
async function followBoot(c: QemuCluster, vmId: string, known: Set<string>, what: string, not?: string, onPoll?: () => Promise<void>) {
  let runningAt = 0;
  let readyAt = 0;
  let stampingAt = 0;
  let host: string | undefined;
  await waitFor(async () => {
    await onPoll?.();
    if (!runningAt) {
      const vm = await vmOf(c, vmId);
      if (vm.phase === 'failed') throw new Error(`${what}: the VM failed: ${JSON.stringify(vm)}`);
      const on = vm.phase === 'running' ? await hostNameOf(c, vm.hostId) : undefined;
      if (on && on !== not) {
        runningAt = Date.now();
        host = on;
      }
    }
    // Every other host's console is read: the new boot may show before control says where it runs.
    for (const h of HOSTS) {
      if (h === not) continue;
      const text = c.consoleOf(h, vmId);
      if (!readyAt && newBootReady(text, known)) readyAt = Date.now();
      for (const [boot, counter] of bootsIn(text)) if (!known.has(boot) && counter >= STAMPS_BACK) stampingAt ||= Date.now();
    }
    return runningAt > 0 && readyAt > 0 && stampingAt > 0;
  }, what, FAILOVER_TIMEOUT_MS, POLL_MS);
  return { runningAt, readyAt, stampingAt, host: host! };
}

/** Creates the stamping HA guest and waits until it runs and has stamped; how long each took from the POST. */
async function createGuest(c: QemuCluster, name: string, storage: FailoverStorage): Promise<{ id: string; host: string; boot: BootSample }> {
  const t0 = Date.now();
  const res = await c.api<{ vm: { id: string } }>('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: VM_MEMORY_MIB, image: IMAGE, ha: true, diskGiB: 1, storage });
  if (res.status !== 202) throw new Error(`create ${name}: ${res.status} ${JSON.stringify(res.body)}`);
  const id = res.body.vm.id;
  const b = await followBoot(c, id, new Set(), `${name} running and stamping`);
  return { id, host: b.host, boot: { runningS: s(b.runningAt - t0), readyS: s(b.readyAt - t0), stampingS: s(b.stampingAt - t0) } };
}

async function deleteGuest(c: QemuCluster, id: string): Promise<void> {
  const res = await c.api<{ task?: { id: string } }>('DELETE', `/api/v1/vms/${id}`);
  if (res.status !== 202 || !res.body.task) throw new Error(`delete ${id}: ${res.status} ${JSON.stringify(res.body)}`);
  await c.waitTask(res.body.task.id, 60_000);
}

interface VolumeRow {
  replicated: boolean;
  replica: { hostId: string; state: string } | null;
}

/**
 * Replicated storage: waits until the guest's disk has a copy in step on another host (after a failover the
 * replicator builds a new one on a third host) and returns that host's name; shared storage has none.
 */
async function copyInStep(c: QemuCluster, vmId: string, storage: FailoverStorage): Promise<string | undefined> {
  if (storage !== 'replicated') return undefined;
  let copy: string | undefined;
  await waitFor(async () => {
    const vols = (await c.api<{ items: VolumeRow[] }>('GET', `/api/v1/volumes?vm=${vmId}`)).body.items.filter((v) => v.replicated);
    const r = vols.length === 1 ? vols[0].replica : null;
    copy = r?.state === 'synced' ? await hostNameOf(c, r.hostId) : undefined;
    return copy !== undefined;
  }, `a copy in step of ${vmId}'s disk`, REPLICA_SYNC_TIMEOUT_MS, 200);
  return copy;
}

/**
 * Kills the host the guest runs on and follows the failover: the host declared failed (its failedAt), the
 * guest released for a restart and said running again (the HA manager's events), a new boot on the console
 * of another host and its stamps advancing. The killed host is started again afterwards.
 */
async function failoverRound(c: QemuCluster, vmId: string, storage: FailoverStorage): Promise<Round> {
  const copyOn = await copyInStep(c, vmId, storage);
  const before = await vmOf(c, vmId);
  const from = await hostNameOf(c, before.hostId);
  if (before.phase !== 'running' || !from) throw new Error(`the guest is not running on a known host: ${JSON.stringify(before)}`);
  const known = new Set(HOSTS.flatMap((h) => [...bootsIn(c.consoleOf(h, vmId)).keys()]));
  const lastSeq = Math.max(0, ...(await eventsOf(c, vmId)).map((e) => e.seq));

  const killedAt = Date.now();
  await c.killHost(from);
  let failedAt = 0;
  const back = await followBoot(c, vmId, known, `the guest back on another host than ${from}`, from, async () => {
    if (failedAt) return;
    const h = (await c.hosts()).find((x) => x.name === from);
    if (h?.state === 'failed') failedAt = h.failedAt ? Date.parse(h.failedAt) : Date.now();
  });

  const events = (await eventsOf(c, vmId)).filter((e) => e.seq > lastSeq);
  const at = (type: string) => {
    const e = events.find((x) => x.type === type);
    return e ? Date.parse(e.at) : undefined;
  };
  const releasedAt = at('vm.ha.restarting');
  if (releasedAt === undefined) throw new Error(`no vm.ha.restarting event after the kill: ${JSON.stringify(events)}`);
  // The HA manager notes the restart when it sees the VM running; the poll is the fallback.
  const runningAt = at('vm.ha.restarted') ?? back.runningAt;

  c.startAgent(from);
  await waitFor(() => c.allReady(), `${from} ready again`, 120_000, 200);
  if (copyOn && back.host !== copyOn) throw new Error(`the guest restarted on ${back.host}, not on ${copyOn} where its disk's copy was`);
  return { from, to: back.host, killedAt, failedAt: failedAt || releasedAt, releasedAt, runningAt, readyAt: back.readyAt, stampingAt: back.stampingAt, ...(copyOn ? { copyOn } : {}) };
}

/** Plain create-to-running of the guest, FLOOR_RUNS times, each deleted after. */
async function bootSamples(c: QemuCluster): Promise<BootSample[]> {
  const out: BootSample[] = [];
  for (let i = 0; i < FLOOR_RUNS; i++) {
    const g = await createGuest(c, `floor-${i}`, 'shared');
    out.push(g.boot);
    await deleteGuest(c, g.id);
  }
  return out;
}

function reportCase(storage: FailoverStorage, timing: (typeof TIMINGS)[number], rounds: Round[], boots: BootSample[], accel: string): void {
  const t = timing.effective;
  const params = {
    storage, timings: timing.name, hostLeaseMs: t.hostLeaseMs, failoverMarginMs: t.failoverMarginMs, heartbeatMs: t.heartbeatMs,
    rounds: rounds.length, hosts: HOSTS.length, accel, hostLoad1: Math.round(loadavg()[0] * 10) / 10,
  };
  const leaseS = t.hostLeaseMs / 1000;
  const floor = (pick: (b: BootSample) => number) => leaseS + quantile(boots.map(pick), 0.5);
  const figure = (bench: string, samplesS: number[], extra: Record<string, unknown>, floorS?: number) => {
    const st = stats(samplesS);
    const vsFloor = floorS === undefined ? {} : { floorS: s2(floorS), aboveFloorS: s2(st.median - floorS) };
    report(bench, st.median, 's', { ...extra, ...vsFloor, min: st.min, max: st.max, samplesS, ...params });
  };
  const since = (pick: (r: Round) => number, from: (r: Round) => number) => rounds.map((r) => s(pick(r) - from(r)));
  const killed = (r: Round) => r.killedAt;
  figure('ha.failover', since((r) => r.stampingAt, killed), { from: 'host SIGKILL', until: `the new boot's stamps advancing on another host (${STAMPS_BACK} acknowledged writes)` }, floor((b) => b.stampingS));
  figure('ha.failover', since((r) => r.readyAt, killed), { from: 'host SIGKILL', until: 'the new boot\'s ready text on another host\'s console' }, floor((b) => b.readyS));
  figure('ha.failover', since((r) => r.runningAt, killed), { from: 'host SIGKILL', until: 'control says running on another host (vm.ha.restarted)' }, floor((b) => b.runningS));
  figure('ha.failover.detection', since((r) => r.failedAt, killed), { from: 'host SIGKILL', until: 'host failed' });
  figure('ha.failover.fencing', since((r) => r.releasedAt, (r) => r.failedAt), { from: 'host failed', until: 'guest released for a restart (lease + margin)' });
  figure('ha.failover.restart', since((r) => r.readyAt, (r) => r.releasedAt), { from: 'guest released', until: 'the new boot\'s ready text on the new host\'s console' });
  figure('ha.failover.restart', since((r) => r.runningAt, (r) => r.releasedAt), { from: 'guest released', until: 'control says running (vm.ha.restarted)' });
  report('ha.failover.floor', floor((b) => b.stampingS), 's', { what: 'host lease + median create-to-stamping of the same guest', ...params });
  // Control's `running` should never come before the new boot's ready text (beyond this poll's own lag).
  const early = rounds.filter((r) => r.runningAt + EARLY_TOLERANCE_MS < r.readyAt);
  report('ha.failover.running_before_ready', early.length, 'rounds', {
    what: 'control said running before the new boot printed its ready text', leadS: early.map((r) => s(r.readyAt - r.runningAt)), ...params,
  });
  const rel = (r: Round) =>
    `${r.from}->${r.to} failed +${s(r.failedAt - r.killedAt)} released +${s(r.releasedAt - r.killedAt)} running +${s(r.runningAt - r.killedAt)} ` +
    `ready +${s(r.readyAt - r.killedAt)} stamping +${s(r.stampingAt - r.killedAt)}`;
  console.error(`ha.failover ${storage}/${timing.name} rounds (s after the kill): ${rounds.map(rel).join('; ')}`);
}

/** One storage kind under one set of timings: a fresh guest, killed under it ROUNDS times. */
async function failoverCase(c: QemuCluster, storage: FailoverStorage, timing: (typeof TIMINGS)[number]): Promise<Round[]> {
  const g = await createGuest(c, `ha-${storage}-${timing.name}`, storage);
  try {
    const rounds: Round[] = [];
    // At most three HA restarts an hour per VM (the HA manager's limit): one guest covers ROUNDS = 3.
    for (let i = 0; i < ROUNDS; i++) rounds.push(await failoverRound(c, g.id, storage));
    return rounds;
  } finally {
    await deleteGuest(c, g.id).catch((err: unknown) => console.error(`could not delete ${g.id}:`, err));
  }
}

export async function haFailover(): Promise<void> {
  const guest = requireGuest();
  const c = await startQemuCluster('hafo', HOSTS, imageDirsOf(guest.kernelPath, guest.initrdPath));
  try {
    const img = await c.api('POST', '/api/v1/images', {
      name: IMAGE, format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath,
      cmdline: `${guest.cmdline} ${stampSwitch('/dev/vda')}`, readyText: READY_TEXT,
    });
    if (img.status !== 201) throw new Error(`image: ${img.status} ${JSON.stringify(img.body)}`);
    const accel = [...new Set((await c.hosts()).map((h) => h.accelerator ?? 'unknown'))].join(',');
    // The boot half of the floor: the same guest on the same cluster, in the same run (no failover depends on it).
    const boots = await bootSamples(c);
    for (const [until, pick] of [['running (ready text seen)', (b: BootSample) => b.runningS], ['ready text on the console', (b: BootSample) => b.readyS], [`stamping (${STAMPS_BACK} acknowledged writes)`, (b: BootSample) => b.stampingS]] as const) {
      report('ha.guest.create_to_running', quantile(boots.map(pick), 0.5), 's', { until, samplesS: boots.map(pick), runs: boots.length, accel });
    }
    for (const [i, timing] of TIMINGS.entries()) {
      // The cluster started with the defaults; later timings restart control on the same database.
      if (i > 0 || Object.keys(timing.flags).length > 0) {
        await c.startControl(timing.flags);
        await waitFor(() => c.allReady(), 'every host ready on the restarted control', 120_000, 200);
      }
      for (const storage of STORAGES) reportCase(storage, timing, await failoverCase(c, storage, timing), boots, accel);
    }
  } finally {
    await c.close();
  }
}
