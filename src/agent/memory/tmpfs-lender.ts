// Memory loans of a real host: each one a swap image on tmpfs (RAM) served writable over NBD by a detached
// qemu-storage-daemon. Daemons and images outlive the agent; a restarted agent finds them by their paths.
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { findDaemons, startDaemon, stopDaemon } from '../storage/nbd-export.ts';
import { checkVolumeName } from '../storage/pool.ts';
import { type MemoryLender, type MemoryLoan, MemoryLoanError, exportNameOf } from './lender.ts';
import { writeSwapImage } from './swap-image.ts';

const MiB = 1024 * 1024;
/** The swap label of lent memory; the test guest leaves such disks to the host's guest-agent commands. */
export const REMOTE_MEMORY_LABEL = 'awan-rmem';

export interface TmpfsLenderOptions {
  /** The agent's data dir: two agents on one machine get two directories. */
  dataDir: string;
  /** A tmpfs mount; /dev/shm by default. */
  shmDir?: string;
  storageDaemon?: string;
}

/** /dev/shm/awan-<hash of the data dir>: unique per agent, found again by the same agent after a restart. */
export function loanDir(opts: TmpfsLenderOptions): string {
  const id = createHash('sha256').update(resolve(opts.dataDir)).digest('hex').slice(0, 12);
  return join(opts.shmDir ?? '/dev/shm', `awan-${id}`);
}

export function createTmpfsLender(opts: TmpfsLenderOptions): MemoryLender {
  const dir = loanDir(opts);
  const binary = opts.storageDaemon ?? 'qemu-storage-daemon';
  // `a/b` and `a-b` must not share a file: a short hash of the exact name goes into it.
  const fileOf = (name: string) => {
    const n = checkVolumeName(name);
    return join(dir, `${n.replaceAll('/', '-')}-${createHash('sha256').update(n).digest('hex').slice(0, 8)}`);
  };
  const imageOf = (name: string) => `${fileOf(name)}.img`;
  const portFileOf = (name: string) => `${fileOf(name)}.port`;
  const sizeOf = async (path: string) => stat(path).then((s) => Math.floor(s.size / MiB), () => undefined);

  const find = async (name: string): Promise<MemoryLoan | undefined> => {
    const image = imageOf(name);
    const sizeMiB = await sizeOf(image);
    if (sizeMiB === undefined) return undefined;
    const [daemon, ...extra] = findDaemons(image, 'raw');
    for (const d of extra) await stopDaemon(d.pid);
    if (!daemon) return undefined;
    const colon = daemon.result.nbd.lastIndexOf(':');
    return { target: { host: daemon.result.nbd.slice(0, colon), port: Number(daemon.result.nbd.slice(colon + 1)), exportName: daemon.result.exportName }, sizeMiB };
  };

  return {
    find,
    async export(name, sizeMiB, address, mayAllocate) {
      const found = await find(name);
      if (found) return found;
      const image = imageOf(name);
      // An image whose daemon died (killed, host agent restarted it not yet) keeps the guest's swapped pages:
      // it is served again, on its old port when free, so the borrower's QEMU reconnects to it.
      let sizeNow = await sizeOf(image);
      if (sizeNow === undefined) {
        await mayAllocate(sizeMiB);
        try {
          await mkdir(dir, { recursive: true, mode: 0o700 });
          await writeSwapImage(image, sizeMiB, REMOTE_MEMORY_LABEL);
        } catch (err) {
          throw new MemoryLoanError('MEMORY_EXPORT_FAILED', `could not set aside ${sizeMiB} MiB in ${dir}: ${String(err)}`);
        }
        sizeNow = sizeMiB;
      }
      const oldPort = Number(await readFile(portFileOf(name), 'utf8').catch(() => '')) || undefined;
      const daemon = await startDaemon({ binary, path: image, format: 'raw', address, exportName: exportNameOf(name), ...(oldPort ? { port: oldPort } : {}) });
      const colon = daemon.result.nbd.lastIndexOf(':');
      const port = Number(daemon.result.nbd.slice(colon + 1));
      await writeFile(portFileOf(name), String(port));
      return { target: { host: daemon.result.nbd.slice(0, colon), port, exportName: daemon.result.exportName }, sizeMiB: sizeNow };
    },
    async unexport(name) {
      const image = imageOf(name);
      for (const d of findDaemons(image, 'raw')) await stopDaemon(d.pid);
      await rm(image, { force: true });
      await rm(`${image}.tmp`, { force: true });
      await rm(portFileOf(name), { force: true });
      // The directory goes with the last loan: nothing of this agent stays in /dev/shm.
      if ((await readdir(dir).catch(() => ['?'])).length === 0) await rm(dir, { recursive: true, force: true });
    },
    async lentMiB() {
      const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.img'));
      const sizes = await Promise.all(files.map((f) => sizeOf(join(dir, f))));
      return sizes.reduce<number>((n, s) => n + (s ?? 0), 0);
    },
    // tmpfs pages are out of MemAvailable already: the driver's figure counts the loans.
    async hostFreeMiB(driverFreeMiB) {
      return driverFreeMiB;
    },
  };
}
