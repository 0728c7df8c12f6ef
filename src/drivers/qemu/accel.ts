// Chooses KVM or TCG: KVM only when a real Linux kernel boots under it (on some hosts KVM guests hang), and
// only a conclusive answer is kept, on disk and in this process.
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { type Evidence, dropVerdict, machineCacheFile, readVerdict, type Verdict, writeVerdict } from './accel-cache.ts';
import { bootProbe, describeOutcome, type ProbeGuest } from './accel-probe.ts';
import type { Accel } from './args.ts';

export type { ProbeGuest } from './accel-probe.ts';
export type { Evidence } from './accel-cache.ts';

export type AccelLog = (msg: string, fields?: Record<string, unknown>, level?: 'info' | 'warn') => void;

export interface AccelOptions {
  qemuBinary: string;
  dataDir: string;
  /** Wins over everything; then AWAN_ACCEL; then a cached verdict; then a new probe. */
  accel?: Accel;
  /** The kernel to probe with; by default the test guest (AWAN_GUEST_DIR or the repository's cache). */
  probeGuest?: ProbeGuest;
  /** How long the probe kernel may take to print its marker, under KVM and then under TCG. */
  probeTimeoutMs?: number;
  /** The per-user verdict shared by all data dirs; a file in the temp dir unless told otherwise. */
  probeCacheFile?: string;
  /** The device whose access decides whether KVM is there to probe at all. */
  kvmDevice?: string;
  log?: AccelLog;
}

export interface AccelChoice {
  accel: Accel;
  /** `forced` by the options or AWAN_ACCEL, read from a `cached` verdict, or `probed` by this process. */
  how: 'forced' | 'cached' | 'probed';
  /** Set for a conclusive answer, the only kind kept; absent for a fallback. */
  verdict?: Verdict;
  /** Why, in words. */
  reason: string;
  /** The belief of this process it belongs to (see `rounds`); 0 when forced. */
  round: number;
}

const DEFAULT_PROBE_TIMEOUT_MS = 15_000;
const repoGuestDir = join(import.meta.dirname, '..', '..', '..', '.cache', 'guest');

/** The test guest from scripts/build-guest, when it was built: the most faithful probe there is. */
export async function defaultProbeGuest(): Promise<ProbeGuest | undefined> {
  const dir = guestDir();
  const kernelPath = join(dir, 'vmlinuz');
  const initrdPath = join(dir, 'initrd.img');
  try {
    await Promise.all([access(kernelPath, constants.R_OK), access(initrdPath, constants.R_OK)]);
  } catch {
    return undefined;
  }
  return { kernelPath, initrdPath, bootedMarker: 'AWAN-BOOTED' };
}

const guestDir = () => process.env.AWAN_GUEST_DIR ?? repoGuestDir;

async function kvmUsable(device: string): Promise<boolean> {
  try {
    await access(device, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * What this process believes per QEMU binary and probe: one round per probe (or cached verdict taken up),
 * numbered, so that many drivers share one probe and a driver can tell that another one has probed again.
 */
interface Round {
  n: number;
  result: Promise<AccelChoice>;
  settled?: AccelChoice;
}
const rounds = new Map<string, Round>();
let lastRound = 0;

/** Forgets what this process believes, as a new process would start (tests). */
export function forgetProbes(): void {
  rounds.clear();
}

/** `answer` never rejects: a round that failed would hold up every driver that joins it. */
function newRound(key: string, answer: (n: number) => Promise<AccelChoice>): Round {
  const n = ++lastRound;
  const round: Round = {
    n,
    result: answer(n).then((choice) => {
      round.settled = choice;
      return choice;
    }),
  };
  rounds.set(key, round);
  return round;
}

interface Resolved {
  opts: AccelOptions;
  guest: ProbeGuest | undefined;
  timeoutMs: number;
  key: string;
  dataFile: string;
  machineFile: string;
  log: AccelLog;
}

async function resolve(opts: AccelOptions): Promise<Resolved> {
  const guest = opts.probeGuest ?? (await defaultProbeGuest());
  const timeoutMs = opts.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  return {
    opts,
    guest,
    timeoutMs,
    key: JSON.stringify([opts.qemuBinary, guest ?? null, timeoutMs, opts.kvmDevice ?? '/dev/kvm']),
    dataFile: join(opts.dataDir, 'accel.json'),
    machineFile: opts.probeCacheFile ?? machineCacheFile(),
    log: opts.log ?? (() => undefined),
  };
}

function forcedChoice(opts: AccelOptions): AccelChoice | undefined {
  if (opts.accel) return { accel: opts.accel, how: 'forced', reason: 'set by the driver options', round: 0 };
  const env = process.env.AWAN_ACCEL;
  if (env === 'kvm' || env === 'tcg') return { accel: env, how: 'forced', reason: 'set by AWAN_ACCEL', round: 0 };
  return undefined;
}

export async function chooseAccel(opts: AccelOptions): Promise<AccelChoice> {
  const forced = forcedChoice(opts);
  if (forced) return forced;
  const r = await resolve(opts);
  if (!(await kvmUsable(r.opts.kvmDevice ?? '/dev/kvm'))) {
    const verdict: Verdict = { accel: 'tcg', evidence: 'no-kvm', detail: `${r.opts.kvmDevice ?? '/dev/kvm'} is missing or not accessible` };
    await keepMachineWide(r, verdict);
    return settle(r, { accel: 'tcg', how: 'probed', verdict, reason: verdict.detail, round: 0 });
  }
  const current = joinable(r.key);
  if (current) return settle(r, await current.result);
  const cached = (await readVerdict(r.dataFile, r.opts.qemuBinary)) ?? (await readVerdict(r.machineFile, r.opts.qemuBinary, true));
  // Checked again after reading: a driver asking at the same time may have started a probe meanwhile.
  const started = joinable(r.key);
  if (started) return settle(r, await started.result);
  if (cached) {
    r.log('accelerator from a cached verdict', { accel: cached.accel, evidence: cached.evidence, detail: cached.detail }, 'info');
    const round = newRound(r.key, async (n) => ({ accel: cached.accel, how: 'cached', verdict: cached, reason: `cached: ${cached.detail}`, round: n }));
    return settle(r, await round.result);
  }
  // An inconclusive answer is never written down, but the drivers of one process (a demo's hosts, a test
  // file's) share it rather than each spending the probe's time again; the next process probes afresh.
  const fallback = rounds.get(r.key);
  if (fallback?.settled) return settle(r, fallback.settled);
  return settle(r, await newRound(r.key, (n) => probe(r, n)).result);
}

/** A probe under way, or a verdict this process already holds: shared by every driver here. */
function joinable(key: string): Round | undefined {
  const current = rounds.get(key);
  return current && (!current.settled || current.settled.verdict) ? current : undefined;
}

/**
 * After a kernel guest did not boot under `stale`'s KVM: forgets that verdict and probes again, unless the
 * answer was forced or another driver of this process has probed again since.
 */
export async function reprobeAccel(opts: AccelOptions, stale: AccelChoice): Promise<AccelChoice> {
  if (stale.how === 'forced') return stale;
  const r = await resolve(opts);
  const current = rounds.get(r.key);
  if (current && current.n !== stale.round) return settle(r, await current.result);
  await dropVerdict(r.dataFile, stale.accel);
  await dropVerdict(r.machineFile, stale.accel, true);
  // Another driver here may have started the new probe while these files went.
  const started = rounds.get(r.key);
  if (started && started.n !== stale.round) return settle(r, await started.result);
  r.log('dropped the cached accelerator verdict; probing again', { accel: stale.accel, reason: stale.reason }, 'warn');
  return settle(r, await newRound(r.key, (n) => probe(r, n)).result);
}

/** The newest answer of this process for these options: another driver may have probed again since `mine`. */
export async function currentAccel(opts: AccelOptions, mine: AccelChoice): Promise<AccelChoice> {
  if (mine.how === 'forced' || mine.round === 0) return mine;
  const r = await resolve(opts);
  const current = rounds.get(r.key);
  if (!current?.settled || current.n === mine.round) return mine;
  return settle(r, current.settled);
}

/** Every driver keeps a verdict in its data dir too; a fallback leaves none there. */
async function settle(r: Resolved, choice: AccelChoice): Promise<AccelChoice> {
  if (choice.verdict) await writeVerdict(r.dataFile, r.opts.qemuBinary, choice.verdict);
  else await dropVerdict(r.dataFile, 'kvm');
  return choice;
}

/** Another user's file, or a read-only temp dir, costs only a probe in the next process. */
async function keepMachineWide(r: Resolved, v: Verdict): Promise<void> {
  await writeVerdict(r.machineFile, r.opts.qemuBinary, v).catch(() => undefined);
}

/**
 * Boots the probe kernel under KVM; when it does not get there, boots it under TCG in the same time. Only a
 * kernel that boots under TCG but not under KVM says KVM is broken here; no kernel, or one that boots under
 * neither (a machine too busy, a broken kernel), says nothing, so TCG is used for now and nothing is kept.
 */
async function probe(r: Resolved, round: number): Promise<AccelChoice> {
  const c = await probeOnce(r, round);
  if (c.verdict) {
    await keepMachineWide(r, c.verdict);
    r.log('accelerator probed', { accel: c.accel, evidence: c.verdict.evidence, reason: c.reason }, 'info');
  } else {
    r.log('accelerator probe inconclusive', { accel: c.accel, reason: c.reason }, 'warn');
  }
  return c;
}

async function probeOnce(r: Resolved, round: number): Promise<AccelChoice> {
  const conclusive = (accel: Accel, evidence: Evidence, detail: string): AccelChoice =>
    ({ accel, how: 'probed', verdict: { accel, evidence, detail }, reason: detail, round });
  const fallback = (reason: string): AccelChoice => ({ accel: 'tcg', how: 'probed', reason: `${reason}: TCG for now, not cached`, round });
  if (!r.guest) return fallback(`no probe guest in ${guestDir()} (build it with \`npm run build-guest\`, or set AWAN_GUEST_DIR)`);
  const binary = r.opts.qemuBinary;
  const kvm = await bootProbe(binary, 'kvm', r.guest, r.timeoutMs);
  if (kvm.kind === 'booted') return conclusive('kvm', 'linux-booted', `the probe kernel ${r.guest.kernelPath} booted under KVM`);
  const tcg = await bootProbe(binary, 'tcg', r.guest, r.timeoutMs);
  if (tcg.kind === 'booted') {
    return conclusive('tcg', 'linux-failed-under-kvm', `under KVM the probe kernel ${describeOutcome(kvm)}; under TCG it booted`);
  }
  return fallback(`inconclusive probe: under KVM the probe kernel ${describeOutcome(kvm)}, under TCG it ${describeOutcome(tcg)}`);
}
