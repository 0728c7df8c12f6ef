// memory.remote: how fast a neighbour's RAM becomes a guest's swap (attach latency), and one workload larger
// than the guest's RAM run in one run: without more memory (it fails), grown in place (virtio-mem), swap on a local disk file (through the
// host's page cache, and with O_DIRECT as on a host short of memory, whose page cache cannot absorb it),
// remote memory.
import { join } from 'node:path';
import { execute } from '../src/agent/executor.ts';
import type { MemoryLoan } from '../src/agent/memory/lender.ts';
import { writeSwapImage } from '../src/agent/memory/swap-image.ts';
import { loanDir } from '../src/agent/memory/tmpfs-lender.ts';
import { createFileStorage } from '../src/agent/storage/index.ts';
import { createQemuDriver } from '../src/drivers/qemu/index.ts';
import { GuestAgent } from '../src/drivers/qemu/guest-agent.ts';
import { vmPaths } from '../src/drivers/qemu/paths.ts';
import { guestSpec, killProcessesMentioning, requireGuest } from '../src/drivers/qemu/test-support.ts';
import type { HypervisorDriver } from '../src/drivers/types.ts';
import type { Command } from '../src/protocol/messages.ts';
import { killMentioning } from '../test/support/processes.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const GUEST_MIB = 256;
const SWAP_MIB = 512;
/** Allocates and fills 400 MiB at once: more than the 256 MiB guest has (FACTS.md). */
const WORKLOAD_MIB = 400;
const RUNS = 3;
const ATTACHES = 3;

/** Guest-side seconds of one workload run (its own clock: no guest-agent round trips in the figure). */
async function workloadS(agent: GuestAgent): Promise<number> {
  const r = await agent.exec(
    `s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/dev/null bs=${WORKLOAD_MIB}M count=1 2>/dev/null || exit 1; e=$(cut -d' ' -f1 /proc/uptime); echo "$s $e"`,
    600_000,
  );
  if (r.exitCode !== 0) throw new Error(`the workload failed: ${r.stderr}`);
  const [s, e] = r.stdout.trim().split(' ').map(Number);
  return e! - s!;
}

async function medianRun(agent: GuestAgent): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < RUNS; i++) runs.push(await workloadS(agent));
  return quantile(runs, 0.5);
}

export async function memoryRemote(): Promise<void> {
  requireGuest();
  const dir = makeTempDir('rmem');
  const donorDir = join(dir, 'donor');
  const killOurs = (): void => {
    killProcessesMentioning(dir);
    killMentioning(loanDir({ dataDir: donorDir }));
  };
  process.on('exit', killOurs);
  let driver: HypervisorDriver | undefined;
  const storage = createFileStorage(donorDir);
  const run = (command: Command) =>
    execute(command, { driver: driver!, storage, consoles: new Set(), signal: new AbortController().signal, progress: () => undefined, address: async () => '127.0.0.1' });
  try {
    driver = await createQemuDriver({ dataDir: join(dir, 'host'), address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/ });
    const agentOf = (id: string) => new GuestAgent(vmPaths(join(dir, 'host'), id).guestAgent);
    const params = { guestMiB: GUEST_MIB, workloadMiB: WORKLOAD_MIB, swapMiB: SWAP_MIB, runs: RUNS, accel: (await driver.facts()).accelerator };

    // Without more memory the workload fails; grown in place (virtio-mem) it has room.
    await driver.start(guestSpec('grow', { memoryMiB: GUEST_MIB, maxMemoryMiB: GUEST_MIB + SWAP_MIB }));
    const without = await workloadS(agentOf('grow')).then(() => 0, () => 1);
    report('memory.remote.workload_without_memory_fails', without, 'bool', { ...params, note: '1: refused, as it must be' });
    const grownAt = performance.now();
    await driver.setMemory('grow', GUEST_MIB + SWAP_MIB);
    report('memory.grow.request_to_guest', performance.now() - grownAt, 'ms', { fromMiB: GUEST_MIB, toMiB: GUEST_MIB + SWAP_MIB, note: 'virtio-mem, until the guest has it' });
    const ramS = await medianRun(agentOf('grow'));
    await driver.delete('grow');
    report('memory.remote.workload_grown_in_place', ramS, 's', params);

    // Swap on a local disk: a raw file on this host's disk with a swap signature; the test guest swaps on it at boot.
    const diskSwap = async (direct: boolean): Promise<number> => {
      const swapFile = join(dir, 'swap.raw');
      await writeSwapImage(swapFile, SWAP_MIB, 'awan-swap');
      await driver!.start(guestSpec('disk', { memoryMiB: GUEST_MIB, maxMemoryMiB: GUEST_MIB, disks: [{ path: swapFile, format: 'raw', direct }] }));
      const disk = agentOf('disk');
      for (let i = 0; (await disk.exec('grep -c "^/dev/vd" /proc/swaps', 10_000)).exitCode !== 0; i++) {
        if (i > 100) throw new Error('the guest did not swap on its local disk');
        await new Promise((r) => setTimeout(r, 200));
      }
      const s = await medianRun(disk);
      await driver!.delete('disk');
      return s;
    };
    const cachedS = await diskSwap(false);
    report('memory.remote.workload_disk_swap_page_cache', cachedS, 's', { ...params, note: 'the host page cache holds the swap file: RAM speed' });
    const diskS = await diskSwap(true);
    report('memory.remote.workload_disk_swap', diskS, 's', { ...params, note: 'O_DIRECT: the device, as on a host without spare page cache' });

    // Remote memory: a loan from a donor on this machine (loopback), attached to a running guest.
    await driver.start(guestSpec('rmem', { memoryMiB: GUEST_MIB, maxMemoryMiB: GUEST_MIB }));
    const loan = (await run({ op: 'memoryExport', name: 'bench', sizeMiB: SWAP_MIB })) as MemoryLoan;
    const attachMs: number[] = [];
    const detachMs: number[] = [];
    for (let i = 0; i < ATTACHES; i++) {
      if (i > 0) {
        const t = performance.now();
        await run({ op: 'remoteMemoryDetach', vmId: 'rmem', slot: 0 });
        detachMs.push(performance.now() - t);
      }
      const t = performance.now();
      await run({ op: 'remoteMemoryAttach', vmId: 'rmem', slot: 0, target: loan.target, sizeMiB: SWAP_MIB });
      attachMs.push(performance.now() - t);
    }
    report('memory.remote.attach_first', attachMs[0]!, 'ms', { sizeMiB: SWAP_MIB, note: 'request to the guest swapping to it' });
    report('memory.remote.attach_again', quantile(attachMs.slice(1), 0.5), 'ms', { sizeMiB: SWAP_MIB, samples: attachMs.length - 1 });
    report('memory.remote.detach_idle', quantile(detachMs, 0.5), 'ms', { sizeMiB: SWAP_MIB, note: 'swapoff of an unused swap, unplug, blockdev-del' });
    const remoteS = await medianRun(agentOf('rmem'));
    report('memory.remote.workload_remote', remoteS, 's', params);
    const t = performance.now();
    await run({ op: 'remoteMemoryDetach', vmId: 'rmem', slot: 0 });
    report('memory.remote.detach_after_workload', performance.now() - t, 'ms', { sizeMiB: SWAP_MIB });
    await run({ op: 'memoryUnexport', name: 'bench' });

    report('memory.remote.ratio_remote_to_ram', remoteS / ramS, 'x', params);
    report('memory.remote.ratio_disk_to_remote', diskS / remoteS, 'x', { ...params, note: '>1: remote memory is faster than local disk swap (O_DIRECT)' });
    report('memory.remote.ratio_page_cache_disk_to_remote', cachedS / remoteS, 'x', { ...params, note: 'against a swap file the host page cache holds' });
  } finally {
    if (driver) {
      for (const vm of await driver.list().catch(() => [])) await driver.delete(vm.id).catch(() => undefined);
      await driver.close().catch(() => undefined);
    }
    await storage.memory.unexport('bench').catch(() => undefined);
    killOurs();
    process.off('exit', killOurs);
    removeTempDir(dir);
  }
}
