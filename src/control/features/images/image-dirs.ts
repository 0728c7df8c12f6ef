// The directories images may come from: every file an image names (disk, backing file, kernel, initrd) must
// resolve, symlinks and `..` followed, to a regular file inside one of them.
import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative, sep } from 'node:path';
import { AppError } from '../../errors.ts';

export interface ImageDirs {
  /** The configured directories, as given. */
  readonly dirs: readonly string[];
  /**
   * The canonical path of a regular file inside an image directory; IMAGE_INVALID when the file is missing,
   * is not a regular file (a device, fifo or directory) or lies outside every image directory.
   */
  resolve(path: string, what?: string): Promise<string>;
}

export function createImageDirs(dirs: readonly string[]): ImageDirs {
  if (dirs.length === 0) throw new Error('at least one image directory is needed');
  for (const d of dirs) if (!isAbsolute(d)) throw new Error(`image directory ${d} is not an absolute path`);
  const shown = dirs.join(', ');
  return {
    dirs,
    async resolve(path, what = 'image file') {
      if (!isAbsolute(path)) throw new AppError('IMAGE_INVALID', `${what} ${path} is not an absolute path`, { path });
      let real: string;
      try {
        real = await realpath(path);
      } catch {
        throw new AppError('IMAGE_INVALID', `${what} ${path} does not exist or cannot be read`, { path });
      }
      // Directories are resolved on every check: one may be created (the pool) or re-pointed after start.
      const roots = await Promise.all(dirs.map((d) => realpath(d).catch(() => null)));
      if (!roots.some((root) => root !== null && inside(root, real))) {
        throw new AppError('IMAGE_INVALID', `${what} ${path} is outside the image directories (${shown})`, { path, imageDirs: [...dirs] });
      }
      const s = await stat(real).catch(() => null);
      if (!s?.isFile()) throw new AppError('IMAGE_INVALID', `${what} ${path} is not a regular file`, { path });
      return real;
    },
  };
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !isAbsolute(rel) && rel.split(sep)[0] !== '..';
}
