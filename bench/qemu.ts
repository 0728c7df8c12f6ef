// qemu.create_to_running and qemu.migration: the test guest under real QEMU, booted and migrated between two driver instances on 127.0.0.1.
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createQemuDriver, type QemuDriverOptions } from '../src/drivers/qemu/index.ts';
import { startCpuLoad } from './support/cpu-load.ts';
import { GUEST_TROUBLE, dirtyMiB, guestEval, startWriter, stopWriterAndCheck, writerState, type WriterOptions } from './support/guest-writer.ts';
import { guestSpec, killProcessesMentioning, requireGuest } from '../src/drivers/qemu/test-support.ts';
import type { DriverVmSpec, HypervisorDriver, MigrationResult } from '../src/drivers/types.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { waitFor } from './support/wait.ts';

const BOOT_RUNS = 5;
const BOOT_MEMORY_MIB = 256;
/** The lost-writes case: this many moves of a writing 1 GiB guest, both cores busy besides (AWAN_BENCH_MOVES). */
const LOST_WRITES_MOVES = Number(process.env.AWAN_BENCH_MOVES ?? 50);
const LOST_WRITES_MEMORY_MIB = 1024;
/** The other cases give downtime figures for each size and load, in the default mode and forced live. */
const FIGURE_CASES = [
  { memoryMiB: 256, load: 'idle' },
  { memoryMiB: 256, load: 'writing' },
  { memoryMiB: 1024, load: 'writing' },
] as const;
const MIGRATIONS_PER_CASE = 3;
const MIGRATION_TIMEOUT_MS = 120_000;
/** Upper bound of the extra CPU load's life, whatever happens to this process. */
const CPU_LOAD_MAX_S = 1800;
/** The writing guest checks and rewrites 32 MiB of tmpfs over and over; it stops by itself after a few hours. */
const WRITER: WriterOptions = { chunks: 2, seedMiB: 16, marginMiB: 48, maxPasses: 20_000 };

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

interface CaseResult {
  samples: MigrationSample[];
  copied?: MigrationResult['mode'];
  writeMiBps?: number;
  /** MiB the guest wrote and no longer held, as its writer counted them (writing guests only). */
  lostMiB?: number;
  /** The first move after which the writer had counted a loss. */
  firstLossAfterMove?: number;
  trouble?: string;
}

/**
 * Boots one guest on `a`, optionally starts the self-checking writer, and moves it a→b→a… `moves` times.
 * After every move it looks for oopses on the console and reads the writer's count of lost writes; after the
 * last one it waits until every chunk written before it has been checked, and checks the last pass too. The
 * writer checks each chunk before it rewrites it, so no loss at any move can be written over unseen.
 */
async function runCase(a: HypervisorDriver, b: HypervisorDriver, id: string, memoryMiB: number, load: Load, moves: number): Promise<CaseResult> {
  const spec = vmSpec(id, memoryMiB);
  const r: CaseResult = { samples: [] };
  try {
    await a.start(spec);
    if (load === 'writing') r.writeMiBps = await startWriter(a, id, WRITER);
    let here = a;
    let there = b;
    for (let i = 1; i <= moves; i++) {
      const target = await there.prepareIncoming(spec);
      let transferredMiB = 0;
      const t0 = performance.now();
      // On timeout the driver cancels the migration and the guest runs at the source again.
      const result = await here.migrate(id, target, (p) => (transferredMiB = p.transferredMiB), AbortSignal.timeout(MIGRATION_TIMEOUT_MS));
      await there.completeIncoming(id, 60_000);
      r.samples.push({ ...result, wallMs: performance.now() - t0, transferredMiB });
      r.copied = result.mode;
      [here, there] = [there, here];
      const seen = GUEST_TROUBLE.exec(await here.consoleHistory(id))?.[0];
      if (seen) throw new Error(`guest broken after move ${i}: ${seen}`);
      if (load === 'writing') {
        const state = await writerState(here, id);
        r.lostMiB = state.lostMiB;
        if (state.badChunks > 0) r.firstLossAfterMove ??= i;
      } else {
        await guestEval(here, id, 'echo alive');
      }
    }
    if (load === 'writing') {
      const check = await stopWriterAndCheck(here, id, WRITER);
      r.lostMiB = check.lostMiB + check.finalLostMiB;
      if (r.lostMiB > 0) r.firstLossAfterMove ??= moves;
    }
  } catch (err) {
    r.trouble = err instanceof Error ? err.message : String(err);
  } finally {
    for (const d of [a, b]) await d.delete(id).catch(() => undefined);
  }
  return r;
}

function reportTimes(r: CaseResult, params: Record<string, unknown>): void {
  if (r.samples.length === 0) return;
  const all = { ...params, transferredMiB: Math.round(median(r.samples.map((s) => s.transferredMiB))), wallMs: Math.round(median(r.samples.map((s) => s.wallMs))) };
  report('qemu.migration.total', median(r.samples.map((s) => s.totalMs)), 'ms', { ...all, samplesMs: r.samples.map((s) => s.totalMs) });
  report('qemu.migration.downtime', median(r.samples.map((s) => s.downtimeMs)), 'ms', {
    ...all,
    maxMs: Math.max(...r.samples.map((s) => s.downtimeMs)),
    samplesMs: r.samples.map((s) => s.downtimeMs),
  });
}

/**
 * Lost writes in the default mode: a writing 1 GiB guest moved LOST_WRITES_MOVES times while busy loops keep
 * every core busy (the case that once looked lossy). Any MiB lost fails the bench.
 */
async function lostWritesCase(a: HypervisorDriver, b: HypervisorDriver, accel: string, loadProcs: number): Promise<string | undefined> {
  const hostLoad1 = round(loadavg()[0]);
  const r = await runCase(a, b, 'lostw', LOST_WRITES_MEMORY_MIB, 'writing', LOST_WRITES_MOVES);
  const params = {
    moves: r.samples.length, mode: 'auto', copied: r.copied, memoryMiB: LOST_WRITES_MEMORY_MIB, dirtyMiB: dirtyMiB(WRITER),
    guestWriteMiBps: Math.round(r.writeMiBps ?? 0), loadProcs, accel, hostLoad1,
    ...(r.firstLossAfterMove !== undefined ? { firstLossAfterMove: r.firstLossAfterMove } : {}),
    ...(r.trouble ? { trouble: r.trouble } : {}),
  };
  if (r.lostMiB !== undefined) report('qemu.migration.lost_writes', r.lostMiB, 'MiB', params);
  reportTimes(r, { ...params, load: 'writing' });
  if (r.trouble) return `qemu.migration.lost_writes: ${r.trouble}`;
  if (r.samples.length < LOST_WRITES_MOVES) return `qemu.migration.lost_writes: only ${r.samples.length} of ${LOST_WRITES_MOVES} moves`;
  if (r.lostMiB === undefined || r.lostMiB > 0) return `qemu.migration.lost_writes: ${r.lostMiB ?? 'unknown'} MiB of guest writes lost`;
  return undefined;
}

/**
 * The lost-writes case in the default mode (`auto`: live under KVM, paused for the copy under TCG), then
 * downtime figures per size and load in the default mode and forced `live`, all with every core kept busy.
 * A loss or broken guest fails the bench in the default mode; under TCG a forced live copy may lose writes
 * (see pausesForMigration), which is reported, not failed.
 */
export async function qemuMigration(): Promise<void> {
  const failures: string[] = [];
  const cpuLoad = startCpuLoad(CPU_LOAD_MAX_S);
  try {
    for (const mode of ['auto', 'live'] as const) {
      await withDrivers('qemu-mig', ['host-a', 'host-b'], { guestReadyPattern: /AWAN-BOOTED/, migrationMode: mode }, async ([a, b], accel) => {
        if (mode === 'auto') {
          const failed = await lostWritesCase(a, b, accel, cpuLoad.procs);
          if (failed) {
            console.error(failed);
            failures.push(failed);
          }
        }
        for (const { memoryMiB, load } of FIGURE_CASES) {
          const hostLoad1 = round(loadavg()[0]);
          const r = await runCase(a, b, `mig${memoryMiB}${load === 'idle' ? 'i' : 'w'}`, memoryMiB, load, MIGRATIONS_PER_CASE);
          const lost = r.lostMiB ?? 0;
          const intact = r.trouble === undefined && lost === 0;
          reportTimes(r, {
            memoryMiB, load, mode, copied: r.copied, migrations: r.samples.length, guestIntact: intact, accel, hostLoad1, loadProcs: cpuLoad.procs,
            ...(load === 'writing' ? { dirtyMiB: dirtyMiB(WRITER), guestWriteMiBps: Math.round(r.writeMiBps ?? 0), lostMiB: lost } : {}),
          });
          if (!intact) {
            const what = `qemu.migration ${mode} ${memoryMiB} MiB ${load}: ${r.trouble ?? `${lost} MiB of guest writes lost`}`;
            console.error(what);
            if (mode === 'auto' || accel !== 'tcg') failures.push(what);
          }
        }
      });
    }
  } finally {
    cpuLoad.stop();
  }
  if (failures.length > 0) throw new Error(`${failures.length} qemu.migration case(s) failed (see above)`);
}
