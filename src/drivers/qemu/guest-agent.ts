// Talks to qemu-guest-agent inside a VM over its virtio-serial chardev (a unix socket on the host): runs a
// shell script in the guest with `guest-exec` and returns its exit code and output.
//
// Why the guest agent, not a hotplug handler in the guest: it is how real guests (any distribution with the
// qemu-guest-agent package) let the host act inside them, and it gives the host an answer — swapon done, or
// failed and why — where a guest-side hotplug script would leave the host guessing from the console.
import { randomInt } from 'node:crypto';
import { type Socket, connect } from 'node:net';

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export class GuestAgentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestAgentError';
  }
}

const SYNC_RETRY_MS = 1000;
const POLL_MS = 50;

/** One guest's agent. Calls are queued: the chardev serves one client at a time. */
export class GuestAgent {
  private queue: Promise<unknown> = Promise.resolve();
  private pending = 0;

  constructor(private readonly socketPath: string) {}

  /**
   * Runs `script` with /bin/sh -c in the guest; fails if the agent does not answer or the script outlives
   * timeoutMs. `ifIdle`: fail at once instead of waiting behind another command (a status read must not wait
   * for a long swapoff).
   */
  exec(script: string, timeoutMs: number, opts: { ifIdle?: boolean } = {}): Promise<ExecResult> {
    if (opts.ifIdle && this.pending > 0) return Promise.reject(new GuestAgentError('the guest agent is busy'));
    this.pending++;
    const run = this.queue.catch(() => undefined).then(() => this.execNow(script, timeoutMs)).finally(() => this.pending--);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async execNow(script: string, timeoutMs: number): Promise<ExecResult> {
    const deadline = Date.now() + timeoutMs;
    const link = await Link.open(this.socketPath, deadline);
    try {
      const started = await link.call('guest-exec', { path: '/bin/sh', arg: ['-c', script], 'capture-output': true }, deadline);
      const pid = (started as { pid?: unknown }).pid;
      if (typeof pid !== 'number') throw new GuestAgentError(`guest-exec answered ${JSON.stringify(started)}`);
      for (;;) {
        const st = (await link.call('guest-exec-status', { pid }, deadline)) as Record<string, unknown>;
        if (st.exited === true) {
          const text = (v: unknown) => (typeof v === 'string' ? Buffer.from(v, 'base64').toString('utf8') : '');
          const exitCode = typeof st.exitcode === 'number' ? st.exitcode : typeof st.signal === 'number' ? 128 + st.signal : -1;
          return { exitCode, stdout: text(st['out-data']), stderr: text(st['err-data']) };
        }
        if (Date.now() > deadline) throw new GuestAgentError(`the guest's command did not end within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    } finally {
      link.close();
    }
  }
}

/** One connection to the agent, synchronised: answers left from an earlier client are skipped. */
class Link {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private error: Error | undefined;

  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    const fail = (err: Error) => {
      this.error ??= err;
      this.waiter?.();
    };
    sock.on('error', fail);
    sock.on('close', () => fail(new GuestAgentError('the guest agent connection closed')));
  }

  static async open(path: string, deadline: number): Promise<Link> {
    for (;;) {
      const link = await new Promise<Link>((resolve, reject) => {
        const s = connect(path, () => resolve(new Link(s)));
        s.once('error', (err) => reject(new GuestAgentError(`guest agent socket ${path}: ${err.message}`)));
      });
      // The agent may not run yet (the guest boots) or a request written before it opened the port is lost:
      // sync again each second. guest-sync-delimited prefixes its answer with 0xFF, past any stale output.
      const id = randomInt(1, 2 ** 31);
      link.sock.write(`\xff${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`, 'latin1');
      const synced = await link.waitSync(id, Math.min(deadline, Date.now() + SYNC_RETRY_MS)).catch(() => false);
      if (synced) return link;
      link.close();
      if (Date.now() > deadline) throw new GuestAgentError('the guest agent did not answer');
    }
  }

  private async waitSync(id: number, until: number): Promise<boolean> {
    for (;;) {
      const ff = this.buf.indexOf(0xff);
      if (ff >= 0) {
        this.buf = this.buf.subarray(ff + 1);
        const answer = await this.next(until).catch(() => undefined);
        if (answer === undefined) return false;
        if ((answer as { return?: unknown }).return === id) return true;
        continue;
      }
      if (!(await this.wait(until))) return false;
    }
  }

  async call(execute: string, args: Record<string, unknown>, deadline: number): Promise<unknown> {
    this.sock.write(`${JSON.stringify({ execute, arguments: args })}\n`);
    const answer = (await this.next(deadline)) as { return?: unknown; error?: { desc?: string } };
    if (answer.error) throw new GuestAgentError(`${execute}: ${answer.error.desc ?? JSON.stringify(answer.error)}`);
    return answer.return;
  }

  /** The next JSON line the agent sends. */
  private async next(deadline: number): Promise<unknown> {
    for (;;) {
      const nl = this.buf.indexOf(0x0a);
      if (nl >= 0) {
        const line = this.buf.subarray(0, nl).toString('utf8').trim();
        this.buf = this.buf.subarray(nl + 1);
        if (!line) continue;
        try {
          return JSON.parse(line) as unknown;
        } catch {
          throw new GuestAgentError(`the guest agent sent ${line.slice(0, 200)}`);
        }
      }
      if (!(await this.wait(deadline))) throw new GuestAgentError('the guest agent did not answer in time');
    }
  }

  /** Resolves true when more data came, false at the deadline; throws once the connection failed. */
  private wait(until: number): Promise<boolean> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        resolve(false);
      }, Math.max(0, until - Date.now()));
      this.waiter = () => {
        clearTimeout(timer);
        this.waiter = undefined;
        if (this.error) reject(this.error);
        else resolve(true);
      };
    });
  }

  close(): void {
    this.sock.destroy();
  }
}
