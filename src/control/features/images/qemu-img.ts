// qemu-img info, run the way a hostile file cannot exploit: the format is given (never guessed), the backing
// file is not opened, and the process runs under a wall-clock timeout and prlimit's address-space and CPU
// limits (OpenStack's limits for the same call), so a crafted image cannot hang or exhaust control.
import { execFile } from 'node:child_process';
import { Type, type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { AppError } from '../../errors.ts';

export interface QemuImgOptions {
  /** The qemu-img binary (a name looked up on PATH, or a path). */
  bin?: string;
  timeoutMs?: number;
  addressSpaceBytes?: number;
  cpuSeconds?: number;
}

const defaults = { bin: 'qemu-img', timeoutMs: 30_000, addressSpaceBytes: 1024 ** 3, cpuSeconds: 30 };

const InfoSchema = Type.Object({
  format: Type.String(),
  'virtual-size': Type.Integer({ minimum: 0 }),
  'backing-filename': Type.Optional(Type.String()),
  'full-backing-filename': Type.Optional(Type.String()),
  'backing-filename-format': Type.Optional(Type.String()),
  'format-specific': Type.Optional(
    Type.Object({
      type: Type.String(),
      data: Type.Optional(Type.Object({ corrupt: Type.Optional(Type.Boolean()), 'data-file': Type.Optional(Type.String()) })),
    }),
  ),
});
export type QemuImgInfo = Static<typeof InfoSchema>;
const checkInfo = Compile(InfoSchema);

/** What qemu-img says of one file read as `format`; IMAGE_INVALID when it is not such an image. */
export async function qemuImgInfo(path: string, format: 'qcow2' | 'raw', options: QemuImgOptions = {}): Promise<QemuImgInfo> {
  const o = { ...defaults, ...options };
  // -U: a running VM may hold a lock on the file; reading metadata must not need it. Without
  // --backing-chain, info does not open the backing file: the caller checks it before it is read.
  const args = [`--as=${o.addressSpaceBytes}`, `--cpu=${o.cpuSeconds}`, '--', o.bin, 'info', '-U', '-f', format, '--output=json', path];
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile('prlimit', args, { timeout: o.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1024 * 1024, encoding: 'utf8' }, (err, out, stderr) => {
      if (!err) return resolve(out);
      reject(failure(err, stderr, path, format, o));
    });
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    throw new AppError('IMAGE_INVALID', `${path} could not be checked: qemu-img info did not answer in JSON`, { path });
  }
  if (!checkInfo.Check(parsed)) throw new AppError('IMAGE_INVALID', `${path} could not be checked: qemu-img info answered without a format or size`, { path });
  return parsed;
}

function failure(err: Error & { code?: unknown; killed?: boolean; signal?: unknown }, stderr: string, path: string, format: string, o: typeof defaults): AppError {
  if (err.code === 'ENOENT') {
    return new AppError('UNAVAILABLE', 'images cannot be checked: prlimit is missing on the control machine (apt-get install util-linux)');
  }
  // prlimit answers 126/127 when it cannot run the tool itself.
  if ((err.code === 127 || err.code === 126) && /prlimit: failed to execute/.test(stderr)) {
    return new AppError('UNAVAILABLE', `images cannot be checked: ${o.bin} is missing on the control machine (apt-get install qemu-utils)`);
  }
  if (err.killed || err.signal) {
    return new AppError('IMAGE_INVALID', `${path} could not be checked: qemu-img info was stopped after ${o.timeoutMs} ms or at its resource limits`, { path });
  }
  if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return new AppError('IMAGE_INVALID', `${path} could not be checked: qemu-img info said too much`, { path });
  const said = stderr.trim().replace(/^qemu-img: /, '').split('\n')[0] || err.message;
  return new AppError('IMAGE_INVALID', `${path} is not a valid ${format} image: ${said}`, { path, format });
}
