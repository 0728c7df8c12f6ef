// Checks what the stamping test guest (awan.stamp=<disk>, scripts/build-guest) left on its disk against what
// its consoles saw acknowledged: one writer at a time, and no acknowledged write lost.
import { execFileSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every record is one 512-byte sector: `AWSTAMP1 <boot id> <counter>\n`, padded with NULs. */
export const STAMP_RECORD_BYTES = 512;
export const STAMP_MAGIC = 'AWSTAMP1';
/** The kernel command-line switch that turns stamping on, e.g. `awan.stamp=/dev/vda`. */
export const stampSwitch = (device = '/dev/vda'): string => `awan.stamp=${device}`;

export interface Stamp {
  bootId: string;
  counter: number;
}

export interface DiskStamp extends Stamp {
  /** The record's index on the disk (its sector). */
  slot: number;
}

/** One boot's contiguous run of records on the disk. */
export interface BootRun {
  bootId: string;
  firstSlot: number;
  lastSlot: number;
  firstCounter: number;
  lastCounter: number;
  /** Records of this run on the disk. */
  stamps: number;
  /** Stamps of this boot the consoles saw acknowledged, and the highest of them. */
  acknowledged: number;
  lastAcknowledged: number | undefined;
}

export interface StampReport {
  ok: boolean;
  /** The runs in disk order; a boot that appears twice (two writers) has two runs. */
  runs: BootRun[];
  /** Distinct boot ids on the disk, in the order they first appear. */
  boots: string[];
  stampsOnDisk: number;
  acknowledged: number;
  violations: string[];
  /** Everything above as text, for an assertion's message. */
  summary: string;
}

const EMPTY_RECORD = Buffer.alloc(STAMP_RECORD_BYTES);
const RECORD = /^AWSTAMP1 ([0-9a-f]{32}) ([1-9]\d{0,9})\n\0*$/;
const ACK = /AWAN-STAMP ([0-9a-f]{32}) ([1-9]\d{0,9})\r?\n/g;

export interface ReadStampDiskOptions {
  /** Defaults to what the file's header says (qcow2's magic, else raw). */
  format?: 'raw' | 'qcow2';
  /** Reads only the start of a large disk (a whole MiB at least); the log grows from the first sector. */
  maxBytes?: number;
}

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

function readHead(path: string, maxBytes = Infinity): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(Math.min(fstatSync(fd).size, maxBytes));
    let done = 0;
    while (done < buf.length) {
      const n = readSync(fd, buf, done, buf.length - done, done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

/**
 * The disk's bytes, raw. A qcow2 image goes through qemu-img (`convert`, or `dd` with maxBytes) with -U, which
 * allows it while a QEMU still has the image open, into a temporary file that is removed again.
 */
export function readStampDisk(path: string, o: ReadStampDiskOptions = {}): Buffer {
  const qcow2 = o.format === 'qcow2' || (o.format === undefined && readHead(path, 4).equals(QCOW2_MAGIC));
  if (!qcow2) return readHead(path, o.maxBytes);
  const dir = mkdtempSync(join(tmpdir(), 'awan-stamps-'));
  try {
    const raw = join(dir, 'disk.raw');
    const args = o.maxBytes === undefined
      ? ['convert', '-U', '-f', 'qcow2', '-O', 'raw', path, raw]
      : ['dd', '-U', '-f', 'qcow2', '-O', 'raw', 'bs=1M', `count=${Math.max(1, Math.ceil(o.maxBytes / 2 ** 20))}`, `if=${path}`, `of=${raw}`];
    execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    return readFileSync(raw);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The records on a raw disk, in slot order, and the slots that hold something that is not a record. */
export function parseStampDisk(disk: Buffer): { stamps: DiskStamp[]; malformed: number[]; firstEmptySlot: number | undefined; usedAfterEmpty: number[] } {
  const stamps: DiskStamp[] = [];
  const malformed: number[] = [];
  const usedAfterEmpty: number[] = [];
  let firstEmptySlot: number | undefined;
  const slots = Math.floor(disk.length / STAMP_RECORD_BYTES);
  for (let slot = 0; slot < slots; slot++) {
    const rec = disk.subarray(slot * STAMP_RECORD_BYTES, (slot + 1) * STAMP_RECORD_BYTES);
    if (rec.equals(EMPTY_RECORD)) {
      firstEmptySlot ??= slot;
      continue;
    }
    if (firstEmptySlot !== undefined) usedAfterEmpty.push(slot);
    const m = RECORD.exec(rec.toString('latin1'));
    if (!m) malformed.push(slot);
    else stamps.push({ slot, bootId: m[1], counter: Number(m[2]) });
  }
  return { stamps, malformed, firstEmptySlot, usedAfterEmpty };
}

/** The stamps a console printed after their write returned (`AWAN-STAMP <boot id> <counter>`, whole lines only). */
export function acknowledgedStamps(consoleText: string): Stamp[] {
  return [...consoleText.matchAll(ACK)].map((m) => ({ bootId: m[1], counter: Number(m[2]) }));
}

const short = (bootId: string) => bootId.slice(0, 8);

/** Lists numbers compactly: `1-4, 9, 12-13`, cut after `max` ranges. */
function ranges(ns: number[], max = 8): string {
  const sorted = [...new Set(ns)].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < sorted.length; i++) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    out.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j;
  }
  return out.length > max ? `${out.slice(0, max).join(', ')}, … (${sorted.length} in all)` : out.join(', ');
}

/** Groups consecutive records of one boot into runs. */
function toRuns(stamps: DiskStamp[]): Omit<BootRun, 'acknowledged' | 'lastAcknowledged'>[] {
  const runs: Omit<BootRun, 'acknowledged' | 'lastAcknowledged'>[] = [];
  for (const s of stamps) {
    const last = runs.at(-1);
    if (last && last.bootId === s.bootId) {
      last.lastSlot = s.slot;
      last.lastCounter = s.counter;
      last.stamps++;
    } else {
      runs.push({ bootId: s.bootId, firstSlot: s.slot, lastSlot: s.slot, firstCounter: s.counter, lastCounter: s.counter, stamps: 1 });
    }
  }
  return runs;
}

/**
 * Checks a stamp disk against the consoles of every guest that may have written it:
 * - the records are one append-only log: no hole before a record, none that is not a stamp;
 * - each boot is one contiguous run (a boot id never appears again once a newer one was written after it),
 *   whose counters start at 1 and grow by exactly one from record to record;
 * - every stamp a console saw acknowledged is on the disk.
 * `disk` is the raw bytes (see readStampDisk) or a path to read them from (with readStampDisk's options).
 */
export function verifyStamps(input: { disk: Buffer | string; consoles: string | string[] } & ReadStampDiskOptions): StampReport {
  const disk = typeof input.disk === 'string' ? readStampDisk(input.disk, input) : input.disk;
  const { stamps, malformed, firstEmptySlot, usedAfterEmpty } = parseStampDisk(disk);
  const acks = (Array.isArray(input.consoles) ? input.consoles : [input.consoles]).flatMap(acknowledgedStamps);
  const violations: string[] = [];

  if (malformed.length) violations.push(`records that are not stamps at slots ${ranges(malformed)}`);
  if (usedAfterEmpty.length) violations.push(`records after the empty slot ${firstEmptySlot} (the log has holes): slots ${ranges(usedAfterEmpty)}`);

  const runs = toRuns(stamps);
  const firstRun = new Map<string, number>();
  runs.forEach((run, i) => {
    const earlier = firstRun.get(run.bootId);
    if (earlier === undefined) {
      firstRun.set(run.bootId, i);
      if (run.firstCounter !== 1) violations.push(`boot ${short(run.bootId)} begins at slot ${run.firstSlot} with counter ${run.firstCounter}, not 1: its first records were overwritten`);
    } else {
      const between = [...new Set(runs.slice(earlier + 1, i).filter((r) => r.bootId !== run.bootId).map((r) => short(r.bootId)))].join(', ');
      violations.push(`boot ${short(run.bootId)} writes again at slot ${run.firstSlot} (counter ${run.firstCounter}) after boot ${between} wrote: two writers at once`);
    }
  });
  for (let i = 1; i < stamps.length; i++) {
    const [a, b] = [stamps[i - 1], stamps[i]];
    if (a.bootId === b.bootId && b.counter !== a.counter + 1) {
      violations.push(`boot ${short(b.bootId)}: counter ${b.counter} at slot ${b.slot} follows ${a.counter} (expected ${a.counter + 1})`);
    }
  }

  const onDisk = new Map<string, Set<number>>();
  for (const s of stamps) {
    let set = onDisk.get(s.bootId);
    if (!set) onDisk.set(s.bootId, (set = new Set()));
    set.add(s.counter);
  }
  const ackedBy = new Map<string, number[]>();
  for (const a of acks) {
    let list = ackedBy.get(a.bootId);
    if (!list) ackedBy.set(a.bootId, (list = []));
    list.push(a.counter);
  }
  for (const [bootId, counters] of ackedBy) {
    const missing = counters.filter((c) => !onDisk.get(bootId)?.has(c));
    if (missing.length === 0) continue;
    const where = onDisk.has(bootId) ? '' : ' (the boot has no record on the disk at all)';
    violations.push(`boot ${short(bootId)}: ${missing.length} acknowledged stamp(s) missing from the disk${where}: ${ranges(missing)}`);
  }

  const fullRuns: BootRun[] = runs.map((r) => {
    const acked = ackedBy.get(r.bootId) ?? [];
    return { ...r, acknowledged: acked.length, lastAcknowledged: acked.length ? Math.max(...acked) : undefined };
  });
  const boots = [...firstRun.keys()];
  const lines = [
    `${stamps.length} stamp(s) on the disk from ${boots.length} boot(s) in ${runs.length} run(s); ${acks.length} acknowledged on the console(s)`,
    ...fullRuns.map((r) => `  boot ${r.bootId}: slots ${r.firstSlot}-${r.lastSlot}, counters ${r.firstCounter}-${r.lastCounter}, acknowledged ${r.acknowledged} (last ${r.lastAcknowledged ?? '-'})`),
    ...[...ackedBy.keys()].filter((b) => !onDisk.has(b)).map((b) => `  boot ${b}: acknowledged ${ackedBy.get(b)!.length}, nothing on the disk`),
    violations.length ? `${violations.length} violation(s):` : 'no violation',
    ...violations.map((v) => `  - ${v}`),
  ];
  return { ok: violations.length === 0, runs: fullRuns, boots, stampsOnDisk: stamps.length, acknowledged: acks.length, violations, summary: lines.join('\n') };
}

/** Writes records the way the guest does, for tests of the verifier and for fabricated scenarios. */
export function stampRecord(s: Stamp): Buffer {
  const rec = Buffer.alloc(STAMP_RECORD_BYTES);
  rec.write(`${STAMP_MAGIC} ${s.bootId} ${s.counter}\n`, 'latin1');
  return rec;
}
