// qemu.create_to_running and qemu.migration: the test guest under real QEMU, booted and live-migrated between two driver instances on 127.0.0.1.
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createQemuDriver, type QemuDriverOptions } from '../src/drivers/qemu/index.ts';
import { guestSpec, killProcessesMentioning, requireGuest } from '../src/drivers/qemu/test-support.ts';
import type { DriverVmSpec, HypervisorDriver } from '../src/drivers/types.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { delay, waitFor } from './support/wait.ts';

const BOOT_RUNS = 5;
const BOOT_MEMORY_MIB = 256;
const MIGRATION_MEMORY_MIB = [256, 1024] as const;
/** Each case migrates its guest back and forth this many times; the figure is the median. */
const MIGRATIONS_PER_CASE = 5;
const MIGRATION_TIMEOUT_MS = 60_000;
/** The writing guest rewrites this much of a tmpfs file over and over, from a random seed (zero pages would migrate for free). */
const DIRTY_MIB = 64;
const SEED_MIB = 16;
/** Room the guest must keep besides its tmpfs, or the writer would push it into the OOM killer. */
const GUEST_MARGIN_MIB = 48;
/** The in-guest writer stops on its own after this many passes (most of an hour here), in case the VM outlives the bench. */
const WRITER_MAX_PASSES = 20_000;

type Load = 'idle' | 'writing';

/** One driver per pretend host, all with their data in one temp dir; their QEMU processes are found by that dir and killed at the end. */
async function withDrivers<T>(
  prefix: string,
  hosts: string[],
  extra: Partial<QemuDriverOptions>,
  fn: (drivers: HypervisorDriver[], accel: string) => Promise<T>,
): Promise<T> {
  requireGuest();
  const dir = makeTempDir(prefix);
  // QEMU runs detached from us: on Ctrl-C or a crash nothing else would stop the guests this bench started.
  const killOurs = (): void => void killProcessesMentioning(dir);
  process.on('exit', killOurs);
  const drivers: HypervisorDriver[] = [];
  try {
    for (const hostname of hosts) {
      drivers.push(await createQemuDriver({ dataDir: join(dir, hostname), hostname, address: '127.0.0.1', bootTimeoutMs: 60_000, ...extra }));
    }
    const accel = (await drivers[0].facts()).accelerator ?? 'unknown';
    return await fn(drivers, accel);
  } finally {
    for (const d of drivers) {
      for (const vm of await d.list().catch(() => [])) await d.delete(vm.id).catch(() => undefined);
      await d.close().catch(() => undefined);
    }
    killProcessesMentioning(dir);
    process.off('exit', killOurs);
    removeTempDir(dir);
  }
}

/** The test guest with fixed memory (no virtio-mem region) and no NIC: only RAM and device state travel. */
function vmSpec(id: string, memoryMiB: number): DriverVmSpec {
  return guestSpec(id, { memoryMiB, maxMemoryMiB: memoryMiB, nics: [] });
}

const median = (xs: number[]): number => quantile(xs, 0.5);
const round = (x: number): number => Math.round(x * 10) / 10;

export async function qemuCreateToRunning(): Promise<void> {
  // No guestReadyPattern: start() returns once QMP says the VM runs, and the console tells when the guest is up.
  await withDrivers('qemu-boot', ['host-a'], {}, async ([driver], accel) => {
    const qmpMs: number[] = [];
    const bootedMs: number[] = [];
    for (let i = 0; i < BOOT_RUNS; i++) {
      const id = `boot${i}`;
      let tail = '';
      let bootedAt: number | undefined;
      // The live console sees the marker first; the serial log is a fallback in case the socket connected late.
      const unsubscribe = driver.subscribe((e) => {
        if (e.type !== 'console' || e.vmId !== id || bootedAt !== undefined) return;
        tail = (tail + e.data).slice(-64);
        if (tail.includes('AWAN-BOOTED')) bootedAt = performance.now();
      });
      try {
        const t0 = performance.now();
        await driver.start(vmSpec(id, BOOT_MEMORY_MIB));
        qmpMs.push(performance.now() - t0);
        await waitFor(async () => {
          if (bootedAt === undefined && (await driver.consoleHistory(id)).includes('AWAN-BOOTED')) bootedAt = performance.now();
          return bootedAt !== undefined;
        }, `${id} to print AWAN-BOOTED`, 60_000, 20);
        bootedMs.push((bootedAt ?? NaN) - t0);
      } finally {
        unsubscribe();
        await driver.delete(id);
      }
    }
    const params = { memoryMiB: BOOT_MEMORY_MIB, runs: BOOT_RUNS, accel, hostLoad1: round(loadavg()[0]) };
    report('qemu.create_to_running', median(bootedMs), 'ms', { ...params, until: 'guest-booted', samplesMs: bootedMs.map(Math.round) });
    report('qemu.create_to_running', median(qmpMs), 'ms', { ...params, until: 'qmp-running', samplesMs: qmpMs.map(Math.round) });
  });
}

let evalSeq = 0;

/**
 * Runs `expr` in the guest's shell over the serial console and returns what it printed. The marker is written
 * as `V$((k))` so the echoed command line never matches the answer `Vk=<…>`.
 */
async function guestEval(driver: HypervisorDriver, vmId: string, expr: string, opts: { before?: string; timeoutMs?: number } = {}): Promise<string> {
  const k = ++evalSeq;
  // `before` runs in the shell itself: a job backgrounded inside $(…) would hold the substitution open.
  const line = `${opts.before ?? ''} echo "V$((${k}))=<$(${expr})>"\n`;
  // Right after a migration the destination's console socket may take a moment to connect.
  await waitFor(() => driver.consoleWrite(vmId, line).then(() => true, () => false), `the console of ${vmId}`, 10_000, 100);
  const pattern = new RegExp(`V${k}=<([^>]*)>`);
  let answer: string | undefined;
  await waitFor(async () => {
    answer = pattern.exec(await driver.consoleHistory(vmId))?.[1];
    return answer !== undefined;
  }, `the guest to answer ${JSON.stringify(expr)}`, opts.timeoutMs ?? 30_000, 50);
  return answer ?? '';
}

/** The writer's pass count and the guest's uptime in seconds, read together. */
async function writerSample(driver: HypervisorDriver, vmId: string): Promise<{ passes: number; uptimeS: number }> {
  const [passes, uptimeS] = (await guestEval(driver, vmId, `cat /w/n; cut -d' ' -f1 /proc/uptime`)).trim().split(/\s+/).map(Number);
  if (!Number.isFinite(passes) || !Number.isFinite(uptimeS)) throw new Error(`${vmId}: unreadable writer state`);
  return { passes, uptimeS };
}

/** Starts a loop in the guest that keeps rewriting DIRTY_MIB of tmpfs with random data; returns the rate it writes at, in MiB/s. */
async function startWriter(driver: HypervisorDriver, vmId: string): Promise<number> {
  const tmpfsMiB = DIRTY_MIB + SEED_MIB + 8;
  const availableMiB = Number(await guestEval(driver, vmId, `awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo`));
  if (!(availableMiB >= tmpfsMiB + GUEST_MARGIN_MIB)) {
    throw new Error(`${vmId} has ${availableMiB} MiB available, the writer needs ${tmpfsMiB + GUEST_MARGIN_MIB}`);
  }
  const setup = `mkdir -p /w && mount -t tmpfs -o size=${tmpfsMiB}m tmpfs /w && dd if=/dev/urandom of=/w/src bs=1M count=${SEED_MIB} 2>/dev/null && echo 0 > /w/n; echo $?`;
  const status = await guestEval(driver, vmId, setup, { timeoutMs: 60_000 });
  if (status.trim() !== '0') throw new Error(`${vmId}: writer setup failed with status ${status}`);
  const offsets = Array.from({ length: DIRTY_MIB / SEED_MIB }, (_, i) => i * SEED_MIB).join(' ');
  const pass = `for o in ${offsets}; do dd if=/w/src of=/w/dst bs=1M seek=$o conv=notrunc 2>/dev/null; done`;
  const loop = `n=0; while [ $n -lt ${WRITER_MAX_PASSES} ]; do ${pass}; n=$((n+1)); echo $n > /w/n; done`;
  await guestEval(driver, vmId, 'echo started', { before: `(${loop}) </dev/null >/dev/null 2>&1 &` });
  const first = await writerSample(driver, vmId);
  await delay(2000);
  const second = await writerSample(driver, vmId);
  if (second.passes <= first.passes) throw new Error(`${vmId}: the writer made no progress`);
  return ((second.passes - first.passes) * DIRTY_MIB) / (second.uptimeS - first.uptimeS);
}

interface MigrationSample {
  totalMs: number;
  downtimeMs: number;
  /** From the migrate() call until the destination runs the guest. */
  wallMs: number;
  transferredMiB: number;
}

/** Signs on the console that guest memory came out of a migration damaged. */
const GUEST_TROUBLE = /Kernel panic[^\n]*|BUG:[^\n]*|Oops[^\n]*|general protection fault[^\n]*|soft lockup[^\n]*|segfault[^\n]*/;

/** Why the guest is not well after its last move, or undefined: alive, no oops, and under load still writing. */
async function guestHealth(driver: HypervisorDriver, vmId: string, load: Load): Promise<string | undefined> {
  try {
    if (load === 'writing') {
      const before = await writerSample(driver, vmId);
      await waitFor(async () => (await writerSample(driver, vmId)).passes > before.passes, `${vmId} to keep writing`, 20_000, 200);
    } else {
      await guestEval(driver, vmId, 'echo alive');
    }
  } catch (err) {
    return String(err);
  }
  return GUEST_TROUBLE.exec(await driver.consoleHistory(vmId).catch(() => ''))?.[0];
}

/**
 * Boots one guest on `a`, optionally starts the writer, and migrates it a→b→a…, checking the guest on every
 * host it lands on. The figures are reported even when the guest broke (guestIntact: false): then they are
 * not to be trusted (writes QEMU lost make the last pass look short), and the case fails.
 */
async function migrationCase(a: HypervisorDriver, b: HypervisorDriver, memoryMiB: number, load: Load, accel: string): Promise<void> {
  const id = `mig${memoryMiB}${load === 'idle' ? 'i' : 'w'}`;
  const spec = vmSpec(id, memoryMiB);
  const hostLoad1 = round(loadavg()[0]);
  const samples: MigrationSample[] = [];
  let writeMiBps: number | undefined;
  let trouble: string | undefined;
  try {
    await a.start(spec);
    if (load === 'writing') writeMiBps = await startWriter(a, id);
    let here = a;
    let there = b;
    for (let i = 1; i <= MIGRATIONS_PER_CASE; i++) {
      const target = await there.prepareIncoming(spec);
      let transferredMiB = 0;
      const t0 = performance.now();
      // On timeout the driver cancels the migration and QEMU resumes the guest at the source.
      const result = await here.migrate(id, target, (p) => (transferredMiB = p.transferredMiB), AbortSignal.timeout(MIGRATION_TIMEOUT_MS));
      await there.completeIncoming(id, 30_000);
      samples.push({ ...result, wallMs: performance.now() - t0, transferredMiB });
      [here, there] = [there, here];
      // Cheap after every move (the console log only); the full check after the last one.
      const seen = GUEST_TROUBLE.exec(await here.consoleHistory(id))?.[0];
      const why = seen ?? (i === MIGRATIONS_PER_CASE ? await guestHealth(here, id, load) : undefined);
      if (why) {
        trouble = `guest broken after migration ${i}: ${why}`;
        break;
      }
    }
  } catch (err) {
    trouble = String(err);
  } finally {
    for (const d of [a, b]) await d.delete(id).catch(() => undefined);
  }
  if (samples.length > 0) {
    const params = {
      memoryMiB, load, migrations: samples.length, guestIntact: trouble === undefined, accel, hostLoad1,
      ...(writeMiBps !== undefined ? { dirtyMiB: DIRTY_MIB, guestWriteMiBps: Math.round(writeMiBps) } : {}),
      transferredMiB: Math.round(median(samples.map((s) => s.transferredMiB))),
      wallMs: Math.round(median(samples.map((s) => s.wallMs))),
    };
    report('qemu.migration.total', median(samples.map((s) => s.totalMs)), 'ms', { ...params, samplesMs: samples.map((s) => s.totalMs) });
    report('qemu.migration.downtime', median(samples.map((s) => s.downtimeMs)), 'ms', { ...params, samplesMs: samples.map((s) => s.downtimeMs) });
  }
  if (trouble) throw new Error(`${id}: ${trouble}`);
}

export async function qemuMigration(): Promise<void> {
  await withDrivers('qemu-mig', ['host-a', 'host-b'], { guestReadyPattern: /AWAN-BOOTED/ }, async ([a, b], accel) => {
    const failures: string[] = [];
    for (const memoryMiB of MIGRATION_MEMORY_MIB) {
      for (const load of ['idle', 'writing'] as const) {
        // One case failing (no convergence in time, a guest broken by a migration) should not hide the others' figures.
        try {
          await migrationCase(a, b, memoryMiB, load, accel);
        } catch (err) {
          failures.push(err instanceof Error ? err.message : String(err));
          console.error(`qemu.migration ${memoryMiB} MiB ${load} failed: ${failures.at(-1)}`);
        }
      }
    }
    if (failures.length > 0) throw new Error(`${failures.length} qemu.migration case(s) failed (see above)`);
  });
}
