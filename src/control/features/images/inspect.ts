// Checks an image before it enters the catalogue, failing closed: every file it names must be a regular file
// in an image directory, qemu-img (run with the declared format, under limits) must read it, and its backing
// chain is walked one checked file at a time. Images are used where they are: control copies no file into a
// pool (only hosts write pools), so an import is refused with the way to do it instead.
import { stat } from 'node:fs/promises';
import { AppError } from '../../errors.ts';
import { checkHeader } from './header.ts';
import type { ImageDirs } from './image-dirs.ts';
import { type QemuImgInfo, type QemuImgOptions, qemuImgInfo } from './qemu-img.ts';
import type { CreateImage, ImageInspector } from './service.ts';

const MiB = 1024 * 1024;
/** Deeper chains are refused: each layer costs a qemu-img run, and QEMU itself slows down on long chains. */
const MAX_BACKING_DEPTH = 16;

export function createImageInspector({ imageDirs, qemuImg }: { imageDirs: ImageDirs; qemuImg?: QemuImgOptions }): ImageInspector {
  return async (img: CreateImage) => {
    if (img.import) {
      throw new AppError('UNSUPPORTED', `control does not copy image files into pools: put the file in an image directory (${imageDirs.dirs.join(', ')}) with the mode hosts need (0644) and register it by path, without import`, { imageDirs: [...imageDirs.dirs] });
    }
    if (img.format === 'kernel') {
      const kernelPath = await imageDirs.resolve(img.kernelPath!, 'kernel');
      const initrdPath = await imageDirs.resolve(img.initrdPath!, 'initrd');
      const sizes = await Promise.all([kernelPath, initrdPath].map(async (p) => (await stat(p)).size));
      return { sizeMiB: Math.ceil((sizes[0] + sizes[1]) / MiB), kernelPath, initrdPath };
    }
    const path = await imageDirs.resolve(img.path!, 'image');
    const info = await readLayer(path, img.format, qemuImg);
    if (info['full-backing-filename'] !== undefined || info['backing-filename'] !== undefined) await checkBackingChain(path, info, imageDirs, qemuImg);
    return { sizeMiB: Math.ceil(info['virtual-size'] / MiB), path };
  };
}

async function readLayer(path: string, format: 'qcow2' | 'raw', qemuImg: QemuImgOptions | undefined): Promise<QemuImgInfo> {
  await checkHeader(path, format);
  const info = await qemuImgInfo(path, format, qemuImg);
  const data = info['format-specific']?.data;
  if (data?.corrupt === true) throw new AppError('IMAGE_INVALID', `${path} is marked corrupt`, { path });
  if (data?.['data-file'] !== undefined) {
    throw new AppError('IMAGE_INVALID', `${path} keeps its data in an external data file; import a self-contained image`, { path, dataFile: data['data-file'] });
  }
  return info;
}

/** Each backing file must itself pass the image checks, and its format must be recorded, not guessed. */
async function checkBackingChain(top: string, info: QemuImgInfo, imageDirs: ImageDirs, qemuImg: QemuImgOptions | undefined): Promise<void> {
  const seen = new Set([top]);
  let layer = info;
  let of = top;
  for (let depth = 1; ; depth++) {
    const name = layer['full-backing-filename'] ?? layer['backing-filename'];
    if (name === undefined) return;
    const format = layer['backing-filename-format'];
    if (format !== 'qcow2' && format !== 'raw') {
      throw new AppError('IMAGE_INVALID', `${of} names its backing file ${name} ${format ? `as ${format}, which is not qcow2 or raw` : 'without its format'}`, { path: of, backing: name });
    }
    if (depth > MAX_BACKING_DEPTH) throw new AppError('IMAGE_INVALID', `${top} has more than ${MAX_BACKING_DEPTH} backing files`, { path: top });
    let backing: string;
    try {
      backing = await imageDirs.resolve(name, 'backing file');
    } catch (err) {
      if (err instanceof AppError) throw new AppError(err.code, `${of}: ${err.message}`, { ...err.details, of });
      throw err;
    }
    if (seen.has(backing)) throw new AppError('IMAGE_INVALID', `${top} has a backing chain that loops through ${backing}`, { path: top });
    seen.add(backing);
    layer = await readLayer(backing, format, qemuImg);
    of = backing;
  }
}

export type { CreateImage };
