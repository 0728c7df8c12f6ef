// ha.failover.replica_write: how fast a guest writes its disk when every write is mirrored synchronously into a
// replica on another host, against the same disk without one. One QEMU driver (the primary) and one host's
// storage serving the replica over NBD (qemu-storage-daemon, as the agent's replicaExport does), on 127.0.0.1.
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { execute } from '../src/agent/executor.ts';
import { createFileStorage, localPoolPath } from '../src/agent/storage/index.ts';
import { createQemuDriver } from '../src/drivers/qemu/index.ts';
import { guestSpec, killProcessesMentioning, requireGuest } from '../src/drivers/qemu/test-support.ts';
import type { HypervisorDriver, ReplicaTarget } from '../src/drivers/types.ts';
import type { Command } from '../src/protocol/messages.ts';
import { killMentioning } from '../test/support/processes.ts';
import { guestEval } from './support/guest-writer.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { waitFor } from './support/wait.ts';

const VM = 'repw';
const DISK_MIB = 192;
/** Written per run, sequentially from the start of the disk, 1 MiB at a time with O_DIRECT, then fsync'd. */
const WRITE_MIB = 128;
/** Local and replicated runs alternate, so that a change in the machine's load falls on both. */
const ROUNDS = 3;
const SYNC_TIMEOUT_MS = 180_000;
const WRITE_TIMEOUT_MS = 180_000;

/** One sequential write of WRITE_MIB in the guest, timed by the guest's own uptime; MiB/s. */
async function writeRate(driver: HypervisorDriver): Promise<number> {
  const up = `cut -d' ' -f1 /proc/uptime`;
  const out = await guestEval(driver, VM, `a=$(${up}); dd if=/dev/zero of=/dev/vda bs=1M count=${WRITE_MIB} oflag=direct conv=fsync 2>/dev/null; r=$?; b=$(${up}); echo $r $a $b`, { timeoutMs: WRITE_TIMEOUT_MS });
  const [status, from, to] = out.trim().split(/\s+/).map(Number);
  if (status !== 0 || !(to > from)) throw new Error(`the guest's write failed: ${JSON.stringify(out)}`);
  return WRITE_MIB / (to - from);
}

async function replicaState(driver: HypervisorDriver): Promise<string | undefined> {
  return (await driver.status(VM)).replicas?.[0]?.state;
}

export async function haReplicaWrite(): Promise<void> {
  requireGuest();
  if (spawnSync('sh', ['-c', 'command -v qemu-storage-daemon']).status !== 0) throw new Error('qemu-storage-daemon is missing: apt-get install qemu-system-x86');
  const dir = makeTempDir('repw');
  const killOurs = (): void => {
    killProcessesMentioning(dir);
    killMentioning(dir, 'qemu-storage-daemon');
  };
  process.on('exit', killOurs);
  const primaryDir = join(dir, 'a');
  const replicaDir = join(dir, 'b');
  const storage = createFileStorage(replicaDir);
  let driver: HypervisorDriver | undefined;
  try {
    driver = await createQemuDriver({ dataDir: primaryDir, hostname: 'a', address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/, bootTimeoutMs: 120_000 });
    const accel = (await driver.facts()).accelerator ?? 'unknown';
    // The replica host's side, through the agent's own command (schema-shaped as control sends it).
    const serve: Command = { op: 'replicaExport', pool: { type: 'local', path: localPoolPath(replicaDir) }, name: `vms/${VM}/disk0.qcow2`, format: 'qcow2', sizeMiB: DISK_MIB };
    const served = (await execute(serve, {
      driver, storage, consoles: new Set(), signal: new AbortController().signal, progress: () => undefined, address: async () => '127.0.0.1',
    })) as { replica: ReplicaTarget };
    await driver.start(guestSpec(VM, { memoryMiB: 256, maxMemoryMiB: 256, nics: [], disks: [{ path: join(primaryDir, `${VM}-disk0.qcow2`), format: 'qcow2', sizeMiB: DISK_MIB }] }));
    // Every run then overwrites clusters the image already has: the first allocation is not what is measured.
    await writeRate(driver);
    const local: number[] = [];
    const replicated: number[] = [];
    const syncS: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      local.push(await writeRate(driver));
      const t0 = performance.now();
      await driver.attachReplica(VM, 0, served.replica);
      await waitFor(async () => (await replicaState(driver!)) === 'synced', 'the replica synced', SYNC_TIMEOUT_MS, 100);
      syncS.push(Math.round(performance.now() - t0) / 1000);
      replicated.push(await writeRate(driver));
      const after = await replicaState(driver);
      if (after !== 'synced') throw new Error(`the replica was ${after} after the write: its figure would be a local one`);
      await driver.detachReplica(VM, 0);
    }
    const r1 = (x: number) => Math.round(x * 10) / 10;
    const params = {
      writeMiB: WRITE_MIB, diskMiB: DISK_MIB, blockKiB: 1024, flags: 'oflag=direct conv=fsync', rounds: ROUNDS, accel, hostLoad1: r1(loadavg()[0]),
      primaryCache: 'writeback (QEMU default)', replica: 'NBD on 127.0.0.1, qemu-storage-daemon writethrough, blockdev-mirror write-blocking',
    };
    const localMedian = quantile(local, 0.5);
    const replicatedMedian = quantile(replicated, 0.5);
    report('ha.failover.replica_write', localMedian, 'MiB/s', { disk: 'local', samples: local.map(r1), ...params });
    report('ha.failover.replica_write', replicatedMedian, 'MiB/s', { disk: 'replicated (synced)', samples: replicated.map(r1), syncSamplesS: syncS, ...params });
    report('ha.failover.replica_write.ratio', replicatedMedian / localMedian, 'x', { what: 'replicated / local, medians', ...params });
  } finally {
    if (driver) {
      await driver.delete(VM).catch(() => undefined);
      await driver.close().catch(() => undefined);
    }
    await storage.close().catch(() => undefined);
    killOurs();
    process.off('exit', killOurs);
    removeTempDir(dir);
  }
}
