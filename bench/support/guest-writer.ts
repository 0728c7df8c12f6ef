// The test guest driven over its serial console: the answer to a shell command, and a self-checking memory
// writer that counts every write the guest made and its memory no longer holds, across any number of moves.
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { waitFor } from './wait.ts';

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
  /** Memory the writer rewrites pass after pass, in MiB: `chunks` files of `seedMiB` each. */
  chunks: number;
  /** Size of each of the two random seeds it copies from, and of each chunk. */
  seedMiB: number;
  /** Memory the guest must keep free besides its tmpfs, or the writer would push it into the OOM killer. */
  marginMiB: number;
  /** The writer stops by itself after this many passes, in case the VM outlives its run. */
  maxPasses: number;
}

export const dirtyMiB = (opts: WriterOptions): number => opts.chunks * opts.seedMiB;

/** What the writer has done so far, as the guest itself counted it. */
export interface WriterState {
  /** Passes completed. */
  passes: number;
  /** Chunks whose content was not what the writer had last put there, and MiB of them that differed. */
  badChunks: number;
  lostMiB: number;
}

const SEED = (f: string, mib: number): string => `dd if=/dev/urandom of=${f} bs=1M count=${mib} 2>/dev/null`;

/**
 * The writer's loop, in the guest's shell. Pass n copies seed A (n even) or B (n odd) over every chunk, and
 * before it overwrites a chunk it checks that the chunk still holds what pass n-1 put there (the other seed's
 * MD5). So every write is checked before anything can write over it: a write lost at any move is counted,
 * however many moves and passes come later, and nothing is counted that the guest did not lose. A mismatch
 * is then measured per MiB and appended to /w/bad as "pass chunk lostMiB". Counters are replaced by rename,
 * so a reader never sees a half-written one.
 */
function writerLoop(opts: WriterOptions): string {
  const chunks = Array.from({ length: opts.chunks }, (_, i) => i).join(' ');
  const mibs = Array.from({ length: opts.seedMiB }, (_, i) => i).join(' ');
  const lostMiB =
    `l=0; for k in ${mibs}; do ` +
    `x=$(dd if=/w/d$c bs=1M skip=$k count=1 2>/dev/null | md5sum); y=$(dd if=$p bs=1M skip=$k count=1 2>/dev/null | md5sum); ` +
    `[ "$x" = "$y" ] || l=$((l+1)); done`;
  const check = `set -- $(md5sum /w/d$c); if [ "$1" != "$want" ]; then ${lostMiB}; echo "$n $c $l" >> /w/bad; fi`;
  const pass =
    `if [ $((n%2)) = 0 ]; then s=/w/a; p=/w/b; want=$hb; else s=/w/b; p=/w/a; want=$ha; fi; ` +
    `for c in ${chunks}; do if [ $n -gt 0 ]; then ${check}; fi; dd if=$s of=/w/d$c bs=1M conv=notrunc 2>/dev/null; done`;
  return (
    `ha=$(cat /w/ha); hb=$(cat /w/hb); n=0; ` +
    `while [ $n -lt ${opts.maxPasses} ] && [ ! -e /w/stop ]; do ${pass}; n=$((n+1)); echo $n > /w/n.t; mv /w/n.t /w/n; done; touch /w/done`
  );
}

/** The writer's counters: passes done and what its checks found, read in one go. */
export async function writerState(driver: HypervisorDriver, vmId: string): Promise<WriterState> {
  const out = await guestEval(driver, vmId, `cat /w/n; awk '{c++; m+=$3} END {print c+0, m+0}' /w/bad`);
  const [passes, badChunks, lostMiB] = out.trim().split(/\s+/).map(Number);
  if (![passes, badChunks, lostMiB].every(Number.isFinite)) throw new Error(`${vmId}: unreadable writer state ${JSON.stringify(out)}`);
  return { passes, badChunks, lostMiB };
}

/**
 * Sets up the seeds and starts the writer in the guest's background; resolves once it has completed a pass,
 * with the rate it rewrites memory at (MiB/s of guest uptime, checking included).
 */
export async function startWriter(driver: HypervisorDriver, vmId: string, opts: WriterOptions, timeoutMs = 300_000): Promise<number> {
  const tmpfsMiB = dirtyMiB(opts) + 2 * opts.seedMiB + 8;
  const availableMiB = Number(await guestEval(driver, vmId, `awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo`));
  if (!(availableMiB >= tmpfsMiB + opts.marginMiB)) {
    throw new Error(`${vmId} has ${availableMiB} MiB available, the writer needs ${tmpfsMiB + opts.marginMiB}`);
  }
  const hash = (f: string): string => `set -- $(md5sum ${f}) && echo $1 > ${f.replace('/w/', '/w/h')}`;
  const setup =
    `mkdir -p /w && mount -t tmpfs -o size=${tmpfsMiB}m tmpfs /w && ${SEED('/w/a', opts.seedMiB)} && ${SEED('/w/b', opts.seedMiB)} && ` +
    `${hash('/w/a')} && ${hash('/w/b')} && : > /w/bad && echo 0 > /w/n; echo $?`;
  const status = await guestEval(driver, vmId, setup, { timeoutMs });
  if (status.trim() !== '0') throw new Error(`${vmId}: writer setup failed with status ${status}`);
  await guestEval(driver, vmId, 'echo started', { before: `(${writerLoop(opts)}) </dev/null >/dev/null 2>&1 &` });
  const up = async (): Promise<number> => Number((await guestEval(driver, vmId, `cut -d' ' -f1 /proc/uptime`)).trim());
  let first: { passes: number; uptimeS: number } | undefined;
  await waitFor(async () => {
    const { passes } = await writerState(driver, vmId);
    if (passes >= 1 && !first) first = { passes, uptimeS: await up() };
    return first !== undefined && passes > first.passes;
  }, `${vmId}'s writer to complete two passes`, timeoutMs, 200);
  const { passes } = await writerState(driver, vmId);
  const uptimeS = await up();
  return first ? ((passes - first.passes) * dirtyMiB(opts)) / Math.max(0.001, uptimeS - first.uptimeS) : 0;
}

/**
 * Waits until every chunk written so far has been checked (two more passes: the one under way may have
 * started before the last move), stops the writer at the end of a pass and checks what the last pass wrote.
 */
export async function stopWriterAndCheck(
  driver: HypervisorDriver,
  vmId: string,
  opts: WriterOptions,
  timeoutMs = 300_000,
): Promise<WriterState & { finalLostMiB: number }> {
  const start = await writerState(driver, vmId);
  await waitFor(async () => (await writerState(driver, vmId)).passes >= start.passes + 2, `${vmId}'s writer to check every chunk`, timeoutMs, 500);
  await guestEval(driver, vmId, 'touch /w/stop; while [ ! -e /w/done ]; do sleep 0.2; done; echo stopped', { timeoutMs });
  const state = await writerState(driver, vmId);
  // The last pass (passes-1) copied seed A when even: every chunk must now equal it.
  const seed = (state.passes - 1) % 2 === 0 ? 'a' : 'b';
  const chunks = Array.from({ length: opts.chunks }, (_, i) => i).join(' ');
  const out = await guestEval(driver, vmId, `w=$(cat /w/h${seed}); b=0; for c in ${chunks}; do set -- $(md5sum /w/d$c); [ "$1" = "$w" ] || b=$((b+1)); done; echo $b`, { timeoutMs });
  const finalBad = Number(out.trim());
  if (!Number.isFinite(finalBad)) throw new Error(`${vmId}: unreadable final check ${JSON.stringify(out)}`);
  return { ...state, finalLostMiB: finalBad * opts.seedMiB };
}
