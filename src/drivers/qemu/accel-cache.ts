// The accelerator verdicts kept on disk: only conclusive ones, each saying how it was reached.
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { type Static, Type } from 'typebox';
import { Compile } from 'typebox/compile';
import type { Accel } from './args.ts';

/**
 * How a verdict was reached. `linux-booted`: the probe kernel printed its marker under KVM.
 * `linux-failed-under-kvm`: it did not under KVM, and the same kernel did under TCG in the same time.
 * `no-kvm`: /dev/kvm is missing or not ours to open. Anything less is no verdict and is never written.
 */
export type Evidence = 'linux-booted' | 'linux-failed-under-kvm' | 'no-kvm';

export interface Verdict {
  accel: Accel;
  evidence: Evidence;
  /** What the probe saw, in words, for the operator reading the file or the log. */
  detail: string;
}

const CacheRecordSchema = Type.Object({
  accel: Type.Union([Type.Literal('kvm'), Type.Literal('tcg')]),
  evidence: Type.Union([Type.Literal('linux-booted'), Type.Literal('linux-failed-under-kvm'), Type.Literal('no-kvm')]),
  detail: Type.String(),
  qemuBinary: Type.String(),
  hostKernel: Type.String(),
  probedAt: Type.String(),
});
type CacheRecord = Static<typeof CacheRecordSchema>;
const checkRecord = Compile(CacheRecordSchema);

/** The evidence that can back each answer; a record pairing them otherwise was not written by us. */
const BACKS: Record<Evidence, Accel> = { 'linux-booted': 'kvm', 'linux-failed-under-kvm': 'tcg', 'no-kvm': 'tcg' };

/** Shared by every data dir of this user on the machine, so each new agent or test process skips the probe. */
export function machineCacheFile(): string {
  return join(tmpdir(), `awan-accel-${process.getuid?.() ?? 0}.json`);
}

export async function writeVerdict(file: string, binary: string, v: Verdict): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const record: CacheRecord = { ...v, qemuBinary: binary, hostKernel: release(), probedAt: new Date().toISOString() };
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`);
  await rename(tmp, file);
}

/**
 * A verdict holds while the QEMU binary and the host kernel are the same, and only when it says how it was
 * reached: files of earlier versions carry no evidence (some cached `kvm` on a SeaBIOS sign of life alone).
 */
export async function readVerdict(file: string, binary: string, mustBeOurs = false): Promise<Verdict | undefined> {
  const record = await readRecord(file, mustBeOurs);
  if (!record || record.qemuBinary !== binary || record.hostKernel !== release()) return undefined;
  if (BACKS[record.evidence] !== record.accel) return undefined;
  return { accel: record.accel, evidence: record.evidence, detail: record.detail };
}

/** Removes the file when it says `accel`, trusted or not; a file saying something else is left to its writer. */
export async function dropVerdict(file: string, accel: Accel, mustBeOurs = false): Promise<void> {
  const raw = await readRaw(file, mustBeOurs);
  if (typeof raw === 'object' && raw !== null && (raw as { accel?: unknown }).accel === accel) await rm(file, { force: true });
}

async function readRecord(file: string, mustBeOurs: boolean): Promise<CacheRecord | undefined> {
  const raw = await readRaw(file, mustBeOurs);
  return checkRecord.Check(raw) ? raw : undefined;
}

async function readRaw(file: string, mustBeOurs: boolean): Promise<unknown> {
  try {
    // In a shared temp dir, only trust a file this user wrote.
    if (mustBeOurs && (await stat(file)).uid !== process.getuid?.()) return undefined;
    return JSON.parse(await readFile(file, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}
