// Checks an image before it enters the catalogue: qemu-img reads its real format and size (a corrupt or
// unknown file is refused), and an import copies it into the shared pool.
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { inspectImage } from '../../../drivers/qemu/images.ts';
import { DriverError } from '../../../drivers/types.ts';
import type { Logger } from '../../../lib/logger.ts';
import { AppError } from '../../errors.ts';
import type { CreateImage, ImageInspector } from './service.ts';

const MiB = 1024 * 1024;

export function createImageInspector({ poolDir, log }: { poolDir: string; log: Logger }): ImageInspector {
  let warned = false;
  return async (img) => {
    if (img.format === 'kernel') {
      const sizes = await Promise.all([img.kernelPath!, img.initrdPath!].map((p) => fileSize(p)));
      return { sizeMiB: Math.ceil((sizes[0] + sizes[1]) / MiB) };
    }
    const path = img.path!;
    let sizeMiB: number;
    try {
      const info = await inspectImage(path);
      if (info.format !== img.format) {
        throw new AppError('IMAGE_INVALID', `${path} is a ${info.format} image, not ${img.format}`, { path, format: info.format });
      }
      if (info.backingPath) throw new AppError('IMAGE_INVALID', `${path} is an overlay of ${info.backingPath}; import a standalone image`);
      sizeMiB = Math.ceil(info.virtualSizeBytes / MiB);
    } catch (err) {
      if (err instanceof DriverError && err.code === 'IMAGE_INVALID') throw new AppError('IMAGE_INVALID', err.message, { path });
      if (!(err instanceof DriverError)) throw err;
      // No qemu-img on this control machine (a simulated demo): accept the file on its existence alone.
      if (!warned) log.warn({ err: err.message }, 'images are not checked: qemu-img is missing (apt-get install qemu-utils)');
      warned = true;
      await fileSize(path);
      sizeMiB = img.sizeMiB ?? 0;
    }
    if (!img.import) return { sizeMiB };
    const dir = join(poolDir, 'images');
    await mkdir(dir, { recursive: true });
    const target = join(dir, `${img.name}.${img.format}`);
    await copyFile(path, target);
    return { sizeMiB, path: target };
  };
}

async function fileSize(path: string): Promise<number> {
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new AppError('IMAGE_INVALID', `${path} is not a file`, { path });
    return s.size;
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError('IMAGE_INVALID', `${path} does not exist or cannot be read`, { path });
  }
}

export type { CreateImage };
