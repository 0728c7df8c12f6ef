// The serial console: live output and keystrokes over QEMU's chardev socket, and an exact history of it.
import { appendFileSync, closeSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
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
 * connection can be missed or doubled.)
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
    catchUpConsole(this.files, (chunk) => this.record(chunk), true);
  }

  private saveOffset(size: number): void {
    saveOffset(this.files, { log: size });
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

/**
 * Where the history stands against QEMU's logfile: `log`, the logfile's size when it was last caught up; and
 * while a connection is open, `history`, the history's size then, so that what the connection delivered is
 * known even if this process dies without closing it (the history grew by it).
 */
interface ConsoleOffset {
  log: number;
  history?: number;
}

function readOffset(files: ConsoleFiles): ConsoleOffset {
  const text = readText(files.offset);
  try {
    const o = JSON.parse(text) as ConsoleOffset | number;
    if (typeof o === 'number') return { log: o }; // as earlier releases wrote it
    if (Number.isInteger(o?.log)) return o;
  } catch {
    // missing or torn: from the start
  }
  return { log: 0 };
}

function saveOffset(files: ConsoleFiles, o: ConsoleOffset): void {
  try {
    writeFileSync(files.offset, JSON.stringify(o));
  } catch {
    // The VM's directory is being removed: nothing left to keep a history for.
  }
}

/**
 * Brings the history up to QEMU's logfile: copies what the logfile holds beyond what the history has, minus
 * what a connection that was open delivered itself. Called when a connection opens (`live`) and before a new
 * QEMU starts writing the same logfile, so a boot never finds an earlier boot's output as if it were its own.
 */
export function catchUpConsole(files: ConsoleFiles, record: (chunk: Buffer) => void, live: boolean): void {
  const size = fileSize(files.qemuLog);
  const o = readOffset(files);
  let from = o.log >= 0 && o.log <= size ? o.log : 0;
  if (o.history !== undefined) from = Math.min(size, from + Math.max(0, fileSize(files.history) - o.history));
  if (size > from) record(readRange(files.qemuLog, from, size - from));
  saveOffset(files, live ? { log: size, history: fileSize(files.history) } : { log: size });
}

/** Appends to a console history file (for a catch-up without a connection). */
export function appendHistory(path: string): (chunk: Buffer) => void {
  return (chunk) => {
    try {
      appendFileSync(path, chunk);
    } catch {
      // as in SerialConsole.record
    }
  };
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
