// Imports copy an image file into the shared pool. The copy gets the pool's own mode, never the source's (a
// 0777 or setuid source must not carry over), and appears under its final name only when complete.
import { constants } from 'node:fs';
import { chmod, copyFile, link, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AppError } from '../../errors.ts';

/** Pool image files: written by control, read by QEMU on every host, whatever user it runs as. */
export const POOL_IMAGE_MODE = 0o644;

export const importedDir = (poolDir: string) => join(poolDir, 'images');

/** Copies `source` to the pool as `<name>.<format>`; CONFLICT when a file of that name is already there. */
export async function importImage(source: string, poolDir: string, name: string, format: string): Promise<string> {
  const dir = importedDir(poolDir);
  await mkdir(dir, { recursive: true });
  const target = join(dir, `${name}.${format}`);
  // The copy is made in a private (0700) directory beside the target: while it still has the source's mode
  // nobody else can reach it, and a failed copy leaves no partial image under the final name.
  const work = await mkdtemp(join(dir, '.import-'));
  try {
    const temp = join(work, 'image');
    await copyFile(source, temp, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    await chmod(temp, POOL_IMAGE_MODE);
    try {
      // link() refuses to replace an existing file, unlike rename(): another image's file stays intact.
      await link(temp, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new AppError('CONFLICT', `the pool already has a file ${target}; choose another image name`, { path: target });
      }
      throw err;
    }
    return target;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Deletes an imported copy; refuses to touch anything outside the pool's image directory. */
export async function removeImported(poolDir: string, path: string): Promise<void> {
  if (dirname(path) !== importedDir(poolDir)) throw new Error(`${path} is not an imported image of pool ${poolDir}`);
  await rm(path, { force: true });
}
