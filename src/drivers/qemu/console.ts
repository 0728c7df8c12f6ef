// The serial console: live output and keystrokes over QEMU's chardev socket, history from its logfile.
import { connect, type Socket } from 'node:net';
import { open } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';

export const HISTORY_BYTES = 64 * 1024;

/** The last `bytes` of the serial log (QEMU appends everything the guest printed, connected or not). */
export async function readHistory(logPath: string, bytes = HISTORY_BYTES): Promise<string> {
  let fh;
  try {
    fh = await open(logPath, 'r');
  } catch {
    return '';
  }
  try {
    const { size } = await fh.stat();
    const start = Math.max(0, size - bytes);
    const buf = Buffer.alloc(size - start);
    await fh.read(buf, 0, buf.length, start);
    let text = buf.toString('utf8');
    // Starting mid-character leaves a replacement char at the front; drop it.
    if (start > 0) text = text.replace(/^\uFFFD+/, '');
    return text;
  } finally {
    await fh.close();
  }
}

/**
 * One connection to the serial socket. QEMU accepts one client at a time, so the driver holds it and fans the
 * output out to subscribers. Output a slow reader would hold back stalls the guest's UART, so we always read.
 */
export class SerialConsole {
  private socket: Socket | undefined;
  private readonly decoder = new StringDecoder('utf8');
  private closed = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(
    private readonly path: string,
    private readonly onData: (text: string) => void,
  ) {
    this.connect(0);
  }

  private connect(attempt: number): void {
    if (this.closed) return;
    const socket = connect(this.path);
    let tries = attempt;
    socket.on('connect', () => {
      this.socket = socket;
      tries = 0;
    });
    socket.on('data', (chunk: Buffer) => {
      const text = this.decoder.write(chunk);
      if (text) this.onData(text);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket === socket) this.socket = undefined;
      // The socket may not exist yet right after launch, or QEMU went away; QMP tells the driver which.
      if (!this.closed && tries < 50) {
        this.retry = setTimeout(() => this.connect(tries + 1), 100);
      }
    });
  }

  get connected(): boolean {
    return this.socket !== undefined;
  }

  write(data: string): Promise<void> {
    const socket = this.socket;
    if (!socket) return Promise.reject(new Error('serial console not connected'));
    return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.socket?.destroy();
    this.socket = undefined;
  }
}
