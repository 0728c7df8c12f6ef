// The first bytes of an image file, read before qemu-img sees it: they tell a qcow2 from a raw file and
// whether a qcow2 keeps its data in another file, without trusting anything the header points to.
import { open } from 'node:fs/promises';
import { AppError } from '../../errors.ts';

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
/** qcow2 v3 incompatible feature bit 2: the guest data lives in an external file the header names. */
const EXTERNAL_DATA_FILE = 1n << 2n;

export async function checkHeader(path: string, format: 'qcow2' | 'raw'): Promise<void> {
  const header = Buffer.alloc(80);
  let length: number;
  try {
    const file = await open(path, 'r');
    try {
      ({ bytesRead: length } = await file.read(header, 0, header.length, 0));
    } finally {
      await file.close();
    }
  } catch (err) {
    throw new AppError('IMAGE_INVALID', `${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { path });
  }
  const isQcow2 = length >= 8 && header.readUInt32BE(0) === QCOW2_MAGIC;
  // A raw disk that starts like a qcow2 is almost surely a mislabelled qcow2: the guest would see its
  // metadata as disk contents.
  if (format === 'raw' && isQcow2) throw new AppError('IMAGE_INVALID', `${path} is a qcow2 image, not raw`, { path, format: 'qcow2' });
  if (format !== 'qcow2') return;
  if (!isQcow2) throw new AppError('IMAGE_INVALID', `${path} is not a qcow2 image (no qcow2 header)`, { path });
  const version = header.readUInt32BE(4);
  if (version >= 3 && length >= 80 && (header.readBigUInt64BE(72) & EXTERNAL_DATA_FILE) !== 0n) {
    throw new AppError('IMAGE_INVALID', `${path} keeps its data in an external data file; import a self-contained image`, { path });
  }
}
