// qemu.create_to_running and qemu.migration: the test guest under real QEMU, booted and migrated between two driver instances on 127.0.0.1.
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createQemuDriver, type QemuDriverOptions } from '../src/drivers/qemu/index.ts';
import { GUEST_TROUBLE, guestEval, startWriter, stopWriterAndCheck, writerSample, type WriterOptions } from './support/guest-writer.ts';
import { guestSpec, killProcessesMentioning, requireGuest } from '../src/drivers/qemu/test-support.ts';
import type { DriverVmSpec, HypervisorDriver, MigrationMode, MigrationResult } from '../src/drivers/types.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { waitFor } from './support/wait.ts';

const BOOT_RUNS = 5;
const BOOT_MEMORY_MIB = 256;
const MIGRATION_MEMORY_MIB = [256, 1024] as const;
/** Each case migrates its guest back and forth this many times; the figure is the median. */
const MIGRATIONS_PER_CASE = 5;
const MIGRATION_TIMEOUT_MS = 60_000;
/** The writing guest rewrites 64 MiB of tmpfs over and over; it stops by itself after most of an hour here. */
const WRITER: WriterOptions = { dirtyMiB: 64, seedMiB: 16, marginMiB: 48, maxPasses: 20_000 };

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

interface MigrationSample {
  totalMs: number;
  downtimeMs: number;
  /** From the migrate() call until the destination runs the guest. */
  wallMs: number;
  transferredMiB: number;
}

/**
 * Why the guest is not well after its last move, or undefined: alive, no oops, and under load still writing,
 * with every write it made still in its memory.
 */
async function guestHealth(driver: HypervisorDriver, vmId: string, load: Load): Promise<string | undefined> {
  try {
    if (load === 'writing') {
      const before = await writerSample(driver, vmId);
      await waitFor(async () => (await writerSample(driver, vmId)).passes > before.passes, `${vmId} to keep writing`, 20_000, 200);
      const check = await stopWriterAndCheck(driver, vmId, WRITER);
      if (check.lostBlocks > 0) return `${check.lostBlocks} of ${check.blocks} MiB the guest wrote lost writes`;
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
async function migrationCase(a: HypervisorDriver, b: HypervisorDriver, memoryMiB: number, load: Load, accel: string, mode: MigrationMode): Promise<void> {
  const id = `mig${memoryMiB}${load === 'idle' ? 'i' : 'w'}`;
  const spec = vmSpec(id, memoryMiB);
  const hostLoad1 = round(loadavg()[0]);
  const samples: MigrationSample[] = [];
  let copied: MigrationResult['mode'] | undefined;
  let writeMiBps: number | undefined;
  let trouble: string | undefined;
  try {
    await a.start(spec);
    if (load === 'writing') writeMiBps = await startWriter(a, id, WRITER);
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
      copied = result.mode;
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
      memoryMiB, load, mode, copied, migrations: samples.length, guestIntact: trouble === undefined, accel, hostLoad1,
      ...(writeMiBps !== undefined ? { dirtyMiB: WRITER.dirtyMiB, guestWriteMiBps: Math.round(writeMiBps) } : {}),
      transferredMiB: Math.round(median(samples.map((s) => s.transferredMiB))),
      wallMs: Math.round(median(samples.map((s) => s.wallMs))),
    };
    report('qemu.migration.total', median(samples.map((s) => s.totalMs)), 'ms', { ...params, samplesMs: samples.map((s) => s.totalMs) });
    report('qemu.migration.downtime', median(samples.map((s) => s.downtimeMs)), 'ms', { ...params, samplesMs: samples.map((s) => s.downtimeMs) });
  }
  if (trouble) throw new Error(`${id}: ${trouble}`);
}

/**
 * Every case in the driver's default mode (`auto`: live under KVM, paused for the copy under TCG), where a
 * broken guest fails the bench, and forced `live`, which shows what a live copy costs and does on this host;
 * under TCG a live copy may lose writes (see pausesForMigration), which is reported, not failed.
 */
export async function qemuMigration(): Promise<void> {
  const failures: string[] = [];
  for (const mode of ['auto', 'live'] as const) {
    await withDrivers('qemu-mig', ['host-a', 'host-b'], { guestReadyPattern: /AWAN-BOOTED/, migrationMode: mode }, async ([a, b], accel) => {
      for (const memoryMiB of MIGRATION_MEMORY_MIB) {
        for (const load of ['idle', 'writing'] as const) {
          // One case failing (no convergence in time, a guest broken by a migration) should not hide the others' figures.
          try {
            await migrationCase(a, b, memoryMiB, load, accel, mode);
          } catch (err) {
            const what = `qemu.migration ${mode} ${memoryMiB} MiB ${load}: ${err instanceof Error ? err.message : String(err)}`;
            console.error(what);
            if (mode === 'auto' || accel !== 'tcg') failures.push(what);
          }
        }
      }
    });
  }
  if (failures.length > 0) throw new Error(`${failures.length} qemu.migration case(s) failed (see above)`);
}
