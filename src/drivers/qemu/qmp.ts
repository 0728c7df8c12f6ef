// QMP client: speaks QEMU's JSON machine protocol over a unix socket (greeting, negotiation, commands, events).
import { connect, type Socket } from 'node:net';
import { decoders, type QmpCommands } from './qmp-commands.ts';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** QEMU refused a command: `errorClass` is QMP's `class` (GenericError, DeviceNotFound, …). */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    message: string,
  ) {
    super(`${command}: ${message}`);
    this.name = 'QmpError';
  }
}

/** The connection ended (QEMU exited or closed the socket) before the answer came. */
export class QmpClosedError extends Error {
  constructor(message = 'QMP connection closed') {
    super(message);
    this.name = 'QmpClosedError';
  }
}

export class QmpTimeoutError extends Error {
  constructor(command: string, timeoutMs: number) {
    super(`${command}: no answer from QEMU within ${timeoutMs} ms`);
    this.name = 'QmpTimeoutError';
  }
}

export interface QmpConnectOptions {
  /** How long to wait for the socket, the greeting and the negotiation together. */
  timeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

type EventListener = (event: QmpEvent) => void;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses one QMP event line; undefined when the message is not a well-formed event. */
function toEvent(msg: Record<string, unknown>): QmpEvent | undefined {
  if (typeof msg.event !== 'string') return undefined;
  const ts = isRecord(msg.timestamp) ? msg.timestamp : {};
  return {
    event: msg.event,
    data: isRecord(msg.data) ? msg.data : {},
    timestamp: {
      seconds: typeof ts.seconds === 'number' ? ts.seconds : 0,
      microseconds: typeof ts.microseconds === 'number' ? ts.microseconds : 0,
    },
  };
}

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Map<string, Set<EventListener>>();
  private readonly closeListeners = new Set<(err: Error) => void>();
  private closedError: Error | undefined;
  private greetingWaiter: ((msg: Record<string, unknown>) => void) | undefined;
  /** QEMU's version from the greeting, e.g. "7.2.22". */
  version = '';

  private constructor(
    private readonly socket: Socket,
    private readonly commandTimeoutMs: number,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpClosedError(`QMP connection failed: ${err.message}`)));
    socket.on('close', () => this.shutdown(new QmpClosedError()));
  }

  /** Connects to a QMP socket, reads the greeting and leaves capability negotiation mode. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const socket = connect(path);
    const client = new QmpClient(socket, opts.commandTimeoutMs ?? 30_000);
    const abort = (): void => client.shutdown(new QmpClosedError('QMP connect aborted'));
    const timer = setTimeout(
      () => client.shutdown(new QmpTimeoutError('QMP greeting', timeoutMs)),
      timeoutMs,
    );
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      const greeting = await new Promise<Record<string, unknown>>((resolve, reject) => {
        client.greetingWaiter = resolve;
        client.onClose(reject);
      });
      client.version = versionOf(greeting);
      await client.call('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', abort);
    }
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Runs a command this module knows, with its arguments and answer typed and the answer checked. */
  async call<K extends keyof QmpCommands>(
    command: K,
    args: QmpCommands[K]['args'],
    opts: { timeoutMs?: number } = {},
  ): Promise<QmpCommands[K]['ret']> {
    const raw = await this.execute(command, args as Record<string, unknown> | undefined, opts);
    return decoders[command](raw) as QmpCommands[K]['ret'];
  }

  /** Runs any command; the answer is unchecked JSON for the caller to validate. */
  execute(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `awan-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // A late answer for this id is dropped in onMessage.
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /** Listens to one event by name, or to every event with '*'. Returns the unsubscribe function. */
  on(event: string, listener: EventListener): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Resolves with the first event of that name matching `filter`; rejects on timeout or a closed socket. */
  waitForEvent(
    event: string,
    opts: { timeoutMs?: number; filter?: (e: QmpEvent) => boolean; signal?: AbortSignal } = {},
  ): Promise<QmpEvent> {
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise((resolve, reject) => {
      const done = (err: Error | undefined, value?: QmpEvent): void => {
        clearTimeout(timer);
        off();
        offClose();
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(value as QmpEvent);
      };
      const onAbort = (): void => done(new Error(`waiting for ${event} aborted`));
      const timer = setTimeout(() => done(new QmpTimeoutError(`event ${event}`, timeoutMs)), timeoutMs);
      const off = this.on(event, (e) => {
        if (!opts.filter || opts.filter(e)) done(undefined, e);
      });
      const offClose = this.onClose((err) => done(err));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Called once when the connection ends, with the reason; immediately if it already has. */
  onClose(listener: (err: Error) => void): () => void {
    if (this.closedError) {
      const err = this.closedError;
      queueMicrotask(() => listener(err));
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  close(): void {
    this.shutdown(new QmpClosedError('QMP client closed'));
  }

  private shutdown(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    this.socket.destroy();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const l of this.closeListeners) l(err);
    this.closeListeners.clear();
    this.listeners.clear();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        this.shutdown(new QmpClosedError(`QMP sent invalid JSON: ${line.slice(0, 200)}`));
        return;
      }
      if (isRecord(msg)) this.onMessage(msg);
    }
  }

  private onMessage(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.greetingWaiter?.(msg);
      this.greetingWaiter = undefined;
      return;
    }
    const event = toEvent(msg);
    if (event) {
      for (const key of [event.event, '*']) {
        for (const l of this.listeners.get(key) ?? []) l(event);
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p || id === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('return' in msg) {
      p.resolve(msg.return);
    } else if (isRecord(msg.error)) {
      const cls = typeof msg.error.class === 'string' ? msg.error.class : 'GenericError';
      const desc = typeof msg.error.desc === 'string' ? msg.error.desc : 'unknown error';
      p.reject(new QmpError(p.command, cls, desc));
    } else {
      p.reject(new QmpError(p.command, 'ProtocolError', 'answer has neither return nor error'));
    }
  }
}

function versionOf(greeting: Record<string, unknown>): string {
  const qmp = isRecord(greeting.QMP) ? greeting.QMP : {};
  const version = isRecord(qmp.version) ? qmp.version : {};
  const q = isRecord(version.qemu) ? version.qemu : {};
  return [q.major, q.minor, q.micro].map((n) => (typeof n === 'number' ? n : 0)).join('.');
}
