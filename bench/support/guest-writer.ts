// The test guest driven over its serial console: the answer to a shell command, and a memory writer whose
// every write can be checked after the guest has migrated.
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { delay, waitFor } from './wait.ts';

/** Signs on the console that guest memory came out of a migration damaged. */
export const GUEST_TROUBLE = /Kernel panic[^\n]*|BUG:[^\n]*|Oops[^\n]*|general protection fault[^\n]*|soft lockup[^\n]*|segfault[^\n]*/;

let evalSeq = 0;

/**
 * Runs `expr` in the guest's shell over the serial console and returns what it printed. The marker is written
 * as `V$((k))` so the echoed command line never matches the answer `Vk=<…>`.
 */
export async function guestEval(
  driver: HypervisorDriver,
  vmId: string,
  expr: string,
  opts: { before?: string; timeoutMs?: number } = {},
): Promise<string> {
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

export interface WriterOptions {
  /** Size of the file the writer rewrites, in MiB; a multiple of seedMiB. */
  dirtyMiB: number;
  /** Size of each of the two random seeds it copies from. */
  seedMiB: number;
  /** Memory the guest must keep free besides its tmpfs, or the writer would push it into the OOM killer. */
  marginMiB: number;
  /** The writer stops by itself after this many passes, in case the VM outlives its test. */
  maxPasses: number;
}

/** The writer's pass count and the guest's uptime in seconds, read together. */
export async function writerSample(driver: HypervisorDriver, vmId: string): Promise<{ passes: number; uptimeS: number }> {
  const [passes, uptimeS] = (await guestEval(driver, vmId, `cat /w/n; cut -d' ' -f1 /proc/uptime`)).trim().split(/\s+/).map(Number);
  if (!Number.isFinite(passes) || !Number.isFinite(uptimeS)) throw new Error(`${vmId}: unreadable writer state`);
  return { passes, uptimeS };
}

/**
 * Starts a loop in the guest that rewrites `dirtyMiB` of a tmpfs file pass after pass, copying from seed A on
 * even passes and seed B on odd ones: every pass changes every page (random data, so no zero pages that would
 * migrate for free), and a write lost anywhere leaves a block that matches neither seed. Returns MiB/s written.
 */
export async function startWriter(driver: HypervisorDriver, vmId: string, opts: WriterOptions): Promise<number> {
  const tmpfsMiB = opts.dirtyMiB + 2 * opts.seedMiB + 8;
  const availableMiB = Number(await guestEval(driver, vmId, `awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo`));
  if (!(availableMiB >= tmpfsMiB + opts.marginMiB)) {
    throw new Error(`${vmId} has ${availableMiB} MiB available, the writer needs ${tmpfsMiB + opts.marginMiB}`);
  }
  const seed = (f: string): string => `dd if=/dev/urandom of=${f} bs=1M count=${opts.seedMiB} 2>/dev/null`;
  const setup = `mkdir -p /w && mount -t tmpfs -o size=${tmpfsMiB}m tmpfs /w && ${seed('/w/a')} && ${seed('/w/b')} && echo 0 > /w/n; echo $?`;
  const status = await guestEval(driver, vmId, setup, { timeoutMs: 60_000 });
  if (status.trim() !== '0') throw new Error(`${vmId}: writer setup failed with status ${status}`);
  const offsets = Array.from({ length: opts.dirtyMiB / opts.seedMiB }, (_, i) => i * opts.seedMiB).join(' ');
  const pass = `if [ $((n%2)) = 0 ]; then s=/w/a; else s=/w/b; fi; for o in ${offsets}; do dd if=$s of=/w/dst bs=1M seek=$o conv=notrunc 2>/dev/null; done`;
  // It checks for /w/stop between passes only, so a stopped writer leaves whole passes behind.
  const loop = `n=0; while [ $n -lt ${opts.maxPasses} ] && [ ! -e /w/stop ]; do ${pass}; n=$((n+1)); echo $n > /w/n; done; touch /w/done`;
  await guestEval(driver, vmId, 'echo started', { before: `(${loop}) </dev/null >/dev/null 2>&1 &` });
  const first = await writerSample(driver, vmId);
  await delay(2000);
  const second = await writerSample(driver, vmId);
  if (second.passes <= first.passes) throw new Error(`${vmId}: the writer made no progress`);
  return ((second.passes - first.passes) * opts.dirtyMiB) / (second.uptimeS - first.uptimeS);
}

/** Short hashes of each 1 MiB block of a guest file. */
async function blockHashes(driver: HypervisorDriver, vmId: string, file: string, blocks: number): Promise<string[]> {
  const loop = `k=0; while [ $k -lt ${blocks} ]; do dd if=${file} bs=1M skip=$k count=1 2>/dev/null | md5sum | cut -c1-12; k=$((k+1)); done`;
  const hashes = (await guestEval(driver, vmId, loop, { timeoutMs: 60_000 })).trim().split(/\s+/);
  if (hashes.length !== blocks) throw new Error(`${vmId}: read ${hashes.length} block hashes of ${file}, expected ${blocks}`);
  return hashes;
}

/**
 * Stops the writer at the end of a pass and compares its file with the seeds, 1 MiB at a time. `lostBlocks`
 * counts blocks that match neither seed: any is a write the guest made and its memory no longer holds.
 */
export async function stopWriterAndCheck(
  driver: HypervisorDriver,
  vmId: string,
  opts: WriterOptions,
): Promise<{ passes: number; blocks: number; lostBlocks: number }> {
  await guestEval(driver, vmId, 'touch /w/stop; while [ ! -e /w/done ]; do sleep 0.2; done; echo stopped', { timeoutMs: 60_000 });
  const { passes } = await writerSample(driver, vmId);
  const a = await blockHashes(driver, vmId, '/w/a', opts.seedMiB);
  const b = await blockHashes(driver, vmId, '/w/b', opts.seedMiB);
  const dst = await blockHashes(driver, vmId, '/w/dst', opts.dirtyMiB);
  const lostBlocks = dst.filter((h, k) => h !== a[k % opts.seedMiB] && h !== b[k % opts.seedMiB]).length;
  return { passes, blocks: dst.length, lostBlocks };
}
