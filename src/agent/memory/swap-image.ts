// Writes a RAM image for lending: a Linux swap area (the guest can swapon it at once, no mkswap over the
// network), fully allocated, so the donor's memory is set aside when it is lent, not when the guest swaps.
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';

const PAGE = 4096;
const MiB = 1024 * 1024;

/** The first page of a swap area as mkswap writes it (union swap_header in linux/swap.h, version 1). */
export function swapHeader(sizeMiB: number, label: string): Buffer {
  const page = Buffer.alloc(PAGE);
  const pages = (sizeMiB * MiB) / PAGE;
  page.writeUInt32LE(1, 1024); // version
  page.writeUInt32LE(pages - 1, 1028); // last_page
  page.writeUInt32LE(0, 1032); // nr_badpages
  randomBytes(16).copy(page, 1036); // uuid
  page.write(label.slice(0, 15), 1052, 'latin1'); // volume name
  page.write('SWAPSPACE2', PAGE - 10, 'latin1');
  return page;
}

/** Creates `path` (via a temporary name, so a crash never leaves a half-written image in its place). */
export async function writeSwapImage(path: string, sizeMiB: number, label: string): Promise<void> {
  const tmp = `${path}.tmp`;
  const f = await open(tmp, 'w', 0o600);
  try {
    await f.write(swapHeader(sizeMiB, label), 0, PAGE, 0);
    const zeros = Buffer.alloc(MiB);
    // Writing every page is what allocates it on tmpfs; a sparse file would take the RAM only later.
    await f.write(zeros, 0, MiB - PAGE, PAGE);
    for (let i = 1; i < sizeMiB; i++) await f.write(zeros, 0, MiB, i * MiB);
  } catch (err) {
    await f.close();
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await f.close().catch(() => undefined);
  }
  await rename(tmp, path);
}
