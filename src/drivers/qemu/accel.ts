// Chooses KVM or TCG: KVM only when a probe guest really boots under it (on some hosts KVM guests hang).
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Accel } from './args.ts';

export interface ProbeGuest {
  kernelPath: string;
  initrdPath: string;
  /** Text on the serial console that proves the guest booted. */
  bootedMarker: string;
}

export interface AccelOptions {
  qemuBinary: string;
  dataDir: string;
  /** Wins over everything; then AWAN_ACCEL; then the cached probe; then a new probe. */
  accel?: Accel;
  probeGuest?: ProbeGuest;
  probeTimeoutMs?: number;
  /** The per-user cache shared by all data dirs; a file in the temp dir unless told otherwise. */
  probeCacheFile?: string;
}

const repoGuestDir = join(import.meta.dirname, '..', '..', '..', '.cache', 'guest');

/** The test guest from scripts/build-guest, when it was built: the most faithful probe there is. */
export function defaultProbeGuest(): ProbeGuest | undefined {
  const dir = process.env.AWAN_GUEST_DIR ?? repoGuestDir;
  const kernelPath = join(dir, 'vmlinuz');
  const initrdPath = join(dir, 'initrd.img');
  if (!existsSync(kernelPath) || !existsSync(initrdPath)) return undefined;
  return { kernelPath, initrdPath, bootedMarker: 'AWAN-BOOTED' };
}

function kvmUsable(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Boots the probe under KVM and waits for its marker on the serial console; always kills the probe. */
async function probeKvm(binary: string, guest: ProbeGuest | undefined, timeoutMs: number): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), 'awan-kvm-probe-'));
  const log = join(dir, 'out.log');
  // Without a guest kernel, SeaBIOS's debug port is the best sign of life; weaker (a BIOS may run where Linux hangs).
  const args = guest
    ? ['-kernel', guest.kernelPath, '-initrd', guest.initrdPath, '-append', 'console=ttyS0 panic=-1', '-serial', `file:${log}`]
    : ['-chardev', `file,id=dbg,path=${log}`, '-device', 'isa-debugcon,iobase=0x402,chardev=dbg'];
  const marker = guest ? guest.bootedMarker : 'No bootable device';
  const child = spawn(binary, ['-accel', 'kvm', '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot', ...args], {
    stdio: 'ignore',
  });
  let exited = false;
  child.once('exit', () => (exited = true));
  child.once('error', () => (exited = true));
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline && !exited) {
      if (existsSync(log) && readFileSync(log, 'utf8').includes(marker)) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  } finally {
    if (!exited) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

// The answer is a property of the machine and takes seconds to get: one probe per QEMU binary per process.
const probes = new Map<string, Promise<Accel>>();

export async function chooseAccel(opts: AccelOptions): Promise<Accel> {
  if (opts.accel) return opts.accel;
  const env = process.env.AWAN_ACCEL;
  if (env === 'kvm' || env === 'tcg') return env;
  const cacheFile = join(opts.dataDir, 'accel.json');
  const cached = (await readCache(cacheFile, opts.qemuBinary)) ?? (await readCache(opts.probeCacheFile ?? machineCache(), opts.qemuBinary, true));
  if (cached) {
    await writeCache(cacheFile, opts.qemuBinary, cached);
    return cached;
  }
  const guest = opts.probeGuest ?? defaultProbeGuest();
  const timeoutMs = opts.probeTimeoutMs ?? 15_000;
  const key = JSON.stringify([opts.qemuBinary, guest, timeoutMs]);
  let probe = probes.get(key);
  if (!probe) {
    probe = (async (): Promise<Accel> => {
      if (!kvmUsable()) return 'tcg';
      return (await probeKvm(opts.qemuBinary, guest, timeoutMs)) ? 'kvm' : 'tcg';
    })();
    probes.set(key, probe);
  }
  const accel = await probe;
  await writeCache(cacheFile, opts.qemuBinary, accel);
  await writeCache(opts.probeCacheFile ?? machineCache(), opts.qemuBinary, accel).catch(() => undefined);
  return accel;
}

/** Shared by every data dir of this user on the machine, so each new agent or test process skips the probe. */
function machineCache(): string {
  return join(tmpdir(), `awan-accel-${process.getuid?.() ?? 0}.json`);
}

async function writeCache(file: string, binary: string, accel: Accel): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const record = { accel, qemuBinary: binary, hostKernel: release(), probedAt: new Date().toISOString() };
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`);
  await rename(tmp, file);
}

/** A cached answer holds while the QEMU binary and the host kernel are the same. */
async function readCache(file: string, binary: string, mustBeOurs = false): Promise<Accel | undefined> {
  try {
    // In a shared temp dir, only trust a file this user wrote.
    if (mustBeOurs && (await stat(file)).uid !== process.getuid?.()) return undefined;
    const parsed: unknown = JSON.parse(await readFile(file, 'utf8'));
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const r = parsed as Record<string, unknown>;
    if (r.qemuBinary !== binary || r.hostKernel !== release()) return undefined;
    return r.accel === 'kvm' || r.accel === 'tcg' ? r.accel : undefined;
  } catch {
    return undefined;
  }
}
