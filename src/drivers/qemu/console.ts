// The serial console: live output and keystrokes over QEMU's chardev socket, and an exact history of it.
import { closeSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { open } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';

export const HISTORY_BYTES = 64 * 1024;

/** The last `bytes` of a console history file. */
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

export interface ConsoleFiles {
  /** QEMU's chardev socket. */
  socket: string;
  /** QEMU's own logfile of the chardev. */
  qemuLog: string;
  /** The history this module keeps: every byte the guest printed, once. */
  history: string;
  /** How far into qemuLog the history is complete, for the next connection to catch up from. */
  offset: string;
}

/**
 * One connection to the serial socket. QEMU accepts one client at a time, so the driver holds it and fans the
 * output out to subscribers. Output a slow reader would hold back stalls the guest's UART, so we always read.
 *
 * The history is written from what the socket delivers, not taken from QEMU's logfile: QEMU 7.2 logs a byte
 * when the socket is full (EAGAIN) and again when its UART sends it once more, so a reader that falls behind
 * (a busy host) finds characters doubled in the logfile — a hash, a number, a marker read from it is then
 * wrong. While no client is connected QEMU logs each byte once, so a new connection first copies what the
 * logfile gained since the last one closed. (Bytes in the moment between that copy and QEMU accepting the
 * connection can be missed or doubled; after a crash of this process the history repeats what the logfile
 * holds since the last connection.)
 */
export class SerialConsole {
  private socket: Socket | undefined;
  private readonly decoder = new StringDecoder('utf8');
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  private historyFd: number | undefined;

  constructor(
    private readonly files: ConsoleFiles,
    private readonly onData: (text: string) => void,
  ) {
    this.connect(0);
  }

  private get path(): string {
    return this.files.socket;
  }

  private record(chunk: Buffer): void {
    try {
      this.historyFd ??= openSync(this.files.history, 'a');
      writeSync(this.historyFd, chunk);
    } catch {
      // The VM's directory is being removed: nothing left to keep a history for.
    }
  }

  /** Copies what QEMU logged while nobody was connected into the history; called before any socket data. */
  private catchUp(): void {
    const size = fileSize(this.files.qemuLog);
    let from = Number(readText(this.files.offset));
    if (!Number.isInteger(from) || from < 0 || from > size) from = 0;
    if (size > from) this.record(readRange(this.files.qemuLog, from, size - from));
    this.saveOffset(size);
  }

  private saveOffset(size: number): void {
    try {
      writeFileSync(this.files.offset, String(size));
    } catch {
      // as in record()
    }
  }

  private connect(attempt: number): void {
    if (this.closed) return;
    const socket = connect(this.path);
    let tries = attempt;
    let connected = false;
    socket.on('connect', () => {
      this.socket = socket;
      connected = true;
      tries = 0;
      this.catchUp();
    });
    socket.on('data', (chunk: Buffer) => {
      this.record(chunk);
      const text = this.decoder.write(chunk);
      if (text) this.onData(text);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket === socket) this.socket = undefined;
      // From here QEMU logs each byte once again: the next connection catches up from this point.
      if (connected) this.saveOffset(fileSize(this.files.qemuLog));
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
    if (this.historyFd !== undefined) closeSync(this.historyFd);
    this.historyFd = undefined;
  }
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

function readRange(path: string, from: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const n = readSync(fd, buf, 0, length, from);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}
