// Helper processes of a benchmark: forked with tsx, driven by request/reply messages over IPC, killed at the end.
import { type ChildProcess, fork } from 'node:child_process';
import { join } from 'node:path';

export interface Reply {
  type: string;
  message?: string;
  [key: string]: unknown;
}

const isReply = (m: unknown): m is Reply => typeof m === 'object' && m !== null && typeof (m as { type?: unknown }).type === 'string';

export class Helper {
  private readonly proc: ChildProcess;
  private exited = false;
  private readonly waiting = new Set<(m: Reply | Error) => void>();

  /** script: a file next to this one. */
  constructor(script: string, readonly name: string) {
    this.proc = fork(join(import.meta.dirname, script), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.proc.on('message', (m) => {
      if (isReply(m)) for (const w of this.waiting) w(m);
    });
    this.proc.on('exit', (code, signal) => {
      this.exited = true;
      for (const w of this.waiting) w(new Error(`${name} exited (code ${code}, signal ${signal})`));
    });
  }

  /** Sends a message and waits for the helper's reply of the given type (an 'error' reply rejects). */
  request(message: object, replyType: string, timeoutMs: number): Promise<Reply> {
    return new Promise((resolve, reject) => {
      if (this.exited) return reject(new Error(`${this.name} is not running`));
      const timer = setTimeout(() => settle(new Error(`${this.name} did not answer ${replyType} within ${timeoutMs} ms`)), timeoutMs);
      const settle = (m: Reply | Error) => {
        if (!(m instanceof Error) && m.type !== replyType && m.type !== 'error') return;
        clearTimeout(timer);
        this.waiting.delete(settle);
        if (m instanceof Error) reject(m);
        else if (m.type === 'error') reject(new Error(`${this.name}: ${m.message ?? 'failed'}`));
        else resolve(m);
      };
      this.waiting.add(settle);
      this.proc.send(message);
    });
  }

  /** Asks the helper to stop cleanly, then kills it if it has not exited in time. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    try {
      this.proc.send({ type: 'stop' });
    } catch {
      // the channel is already gone
    }
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}

/** Helper side: handle the parent's messages, reply with send(); exit when the parent goes away. */
export function serveParent(handle: (message: Record<string, unknown>) => Promise<void>): void {
  process.on('disconnect', () => process.exit(0));
  process.on('message', (m) => {
    if (typeof m !== 'object' || m === null) return;
    handle(m as Record<string, unknown>).catch((err: unknown) => send({ type: 'error', message: err instanceof Error ? err.message : String(err) }));
  });
}

export function send(reply: Reply): void {
  process.send?.(reply);
}
