// Disk images through qemu-img: inspect, create overlays and empty disks, resize and delete volumes.
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { access, link, mkdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { DriverError, type DiskSpec } from '../types.ts';

const run = promisify(execFile);

export interface ImageInfo {
  format: string;
  virtualSizeBytes: number;
  /** The image this one is an overlay of, when it has one. */
  backingPath?: string;
}

const MiB = 1024 * 1024;

/** Reading metadata is quick on any sane image; creating, checking and resizing may touch the whole file. */
const INFO_TIMEOUT_MS = 30_000;
const WORK_TIMEOUT_MS = 10 * 60_000;

async function qemuImg(args: string[], what: string): Promise<string> {
  const timeoutMs = args[0] === 'info' ? INFO_TIMEOUT_MS : WORK_TIMEOUT_MS;
  try {
    const { stdout } = await run('qemu-img', args, { maxBuffer: 16 * MiB, timeout: timeoutMs, killSignal: 'SIGKILL' });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string; killed?: boolean };
    if (e.code === 'ENOENT') throw new DriverError('INTERNAL', 'qemu-img is not installed (apt-get install qemu-utils)');
    if (e.killed) throw new DriverError('IMAGE_INVALID', `${what}: qemu-img did not finish within ${timeoutMs / 1000} s`);
    throw new DriverError('IMAGE_INVALID', `${what}: ${(e.stderr ?? e.message).trim()}`);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** Format and size of an image; IMAGE_INVALID when it is missing, corrupt or not an image at all. */
export async function inspectImage(path: string): Promise<ImageInfo> {
  if (!(await exists(path))) throw new DriverError('IMAGE_INVALID', `${path} does not exist`);
  // -U: a running VM holds a write lock on its disk; reading metadata must not need it.
  const out = await qemuImg(['info', '-U', '--output=json', path], `qemu-img info ${path}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(out);
  } catch {
    throw new DriverError('IMAGE_INVALID', `qemu-img info ${path}: not JSON`);
  }
  if (typeof parsed !== 'object' || parsed === null) throw new DriverError('IMAGE_INVALID', `qemu-img info ${path}: not an object`);
  const info = parsed as Record<string, unknown>;
  if (typeof info.format !== 'string' || typeof info['virtual-size'] !== 'number') {
    throw new DriverError('IMAGE_INVALID', `qemu-img info ${path}: no format or size`);
  }
  const result: ImageInfo = { format: info.format, virtualSizeBytes: info['virtual-size'] };
  const backing = info['full-backing-filename'] ?? info['backing-filename'];
  if (typeof backing === 'string') result.backingPath = backing;
  if (info['format-specific'] && typeof info['format-specific'] === 'object') {
    const specific = (info['format-specific'] as Record<string, unknown>).data;
    if (specific && typeof specific === 'object' && (specific as Record<string, unknown>).corrupt === true) {
      throw new DriverError('IMAGE_INVALID', `${path} is marked corrupt`);
    }
  }
  return result;
}

/** Checks a qcow2 image's consistency (`qemu-img check`); raw images have nothing to check. */
export async function checkImage(path: string): Promise<void> {
  const info = await inspectImage(path);
  if (info.format === 'qcow2') await qemuImg(['check', '-U', '-q', path], `qemu-img check ${path}`);
}

/**
 * Makes sure a VM disk exists at least at its size: an existing one is checked against its declared format
 * (and grown when smaller than `sizeMiB`), a missing one is created as a qcow2 overlay of its backing image
 * or as an empty disk. Safe to run twice at once (a host's pool and a VM start may both make it): the new
 * file appears under its name only when complete, and never replaces one already there.
 */
export async function ensureDisk(disk: DiskSpec): Promise<ImageInfo> {
  if (await exists(disk.path)) {
    const info = await inspectImage(disk.path);
    if (info.format !== disk.format) {
      throw new DriverError('IMAGE_INVALID', `${disk.path} is ${info.format}, the spec says ${disk.format}`);
    }
    if (disk.sizeMiB && disk.sizeMiB * MiB > info.virtualSizeBytes) return resizeVolume(disk.path, disk.sizeMiB);
    return info;
  }
  await mkdir(dirname(disk.path), { recursive: true });
  const temp = join(dirname(disk.path), `.${basename(disk.path)}.${randomUUID().slice(0, 8)}.tmp`);
  try {
    await createDisk({ ...disk, path: temp });
    try {
      await link(temp, disk.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  } finally {
    await rm(temp, { force: true });
  }
  return ensureDisk(disk);
}

async function createDisk(disk: DiskSpec): Promise<void> {
  if (disk.backingPath) {
    const backing = await inspectImage(disk.backingPath);
    const backingFormat = disk.backingFormat ?? backing.format;
    if (backing.format !== backingFormat) {
      throw new DriverError('IMAGE_INVALID', `${disk.backingPath} is ${backing.format}, the spec says ${backingFormat}`);
    }
    if (disk.format !== 'qcow2') throw new DriverError('IMAGE_INVALID', `${disk.path}: only qcow2 disks can have a backing image`);
    const args = ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', disk.backingPath, disk.path];
    // A larger overlay than its backing image is how a VM gets a bigger disk than its template.
    if (disk.sizeMiB && disk.sizeMiB * MiB > backing.virtualSizeBytes) args.push(`${disk.sizeMiB}M`);
    await qemuImg(args, `creating overlay ${disk.path}`);
    return;
  }
  if (!disk.sizeMiB || disk.sizeMiB <= 0) {
    throw new DriverError('IMAGE_INVALID', `${disk.path} does not exist and has neither backingPath nor sizeMiB`);
  }
  await qemuImg(['create', '-q', '-f', disk.format, disk.path, `${disk.sizeMiB}M`], `creating ${disk.path}`);
}

/** Grows (or, with `shrink`, shrinks) a volume that no running VM uses. */
export async function resizeVolume(path: string, sizeMiB: number, opts: { shrink?: boolean } = {}): Promise<ImageInfo> {
  const info = await inspectImage(path);
  if (!Number.isInteger(sizeMiB) || sizeMiB <= 0) throw new DriverError('IMAGE_INVALID', `bad size ${sizeMiB} MiB`);
  if (sizeMiB * MiB < info.virtualSizeBytes && !opts.shrink) {
    throw new DriverError('IMAGE_INVALID', `${path}: shrinking to ${sizeMiB} MiB loses data; pass shrink`);
  }
  const args = ['resize', '-q', '-f', info.format];
  if (opts.shrink) args.push('--shrink');
  await qemuImg([...args, path, `${sizeMiB}M`], `resizing ${path}`);
  return inspectImage(path);
}

/** Removes a volume file; a missing one is already deleted. */
export async function deleteVolume(path: string): Promise<void> {
  await rm(path, { force: true });
}
