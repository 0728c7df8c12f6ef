// One connected agent as control sees it: the socket, commands in flight with their replies, and the
// VMs the agent last reported.
import type { WebSocket } from 'ws';
import type { Logger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import type { Command, ControlMessage, VmStatusMsg } from '../../../protocol/messages.ts';

export class CommandError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'CommandError';
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  onProgress?: (fraction: number, message?: string) => void;
  timer: NodeJS.Timeout;
}

export interface SendOptions {
  /** The command's id, when the caller records it (to cancel it later, or to find its outcome). */
  id?: string;
  timeoutMs?: number;
  onProgress?: (fraction: number, message?: string) => void;
  signal?: AbortSignal;
}

export class AgentConnection {
  private readonly pending = new Map<string, Pending>();
  closed = false;

  constructor(
    readonly hostId: string,
    private readonly socket: WebSocket,
    private readonly log: Logger,
    /** The leader epoch every command on this connection carries. */
    readonly epoch = 0,
  ) {}

  send(message: ControlMessage): void {
    if (this.closed) return;
    this.socket.send(JSON.stringify(message));
  }

  /** Sends a command and resolves with the agent's result; rejects on error, timeout or disconnect. */
  command<T = unknown>(command: Command, opts: SendOptions = {}): Promise<T> {
    if (this.closed) return Promise.reject(new CommandError('HOST_DISCONNECTED', `host ${this.hostId} is not connected`));
    const id = opts.id ?? newId();
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CommandError('COMMAND_TIMEOUT', `host ${this.hostId} did not answer ${command.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onProgress: opts.onProgress, timer });
      opts.signal?.addEventListener('abort', () => this.cancel(id), { once: true });
      this.send({ type: 'command', id, epoch: this.epoch, command });
    });
  }

  /** Asks the agent to abort a command it runs (it answers that command with an error). */
  cancel(commandId: string): void {
    this.send({ type: 'command', id: newId(), epoch: this.epoch, command: { op: 'cancel', commandId } });
  }

  handleResult(id: string, ok: boolean, value: unknown, error?: { code: string; message: string }): void {
    const p = this.pending.get(id);
    if (!p) {
      this.log.warn({ hostId: this.hostId, commandId: id }, 'result for an unknown command');
      return;
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (ok) p.resolve(value);
    else p.reject(new CommandError(error?.code ?? 'AGENT_ERROR', error?.message ?? 'the agent reported an error'));
  }

  handleProgress(id: string, fraction: number, message?: string): void {
    this.pending.get(id)?.onProgress?.(fraction, message);
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new CommandError('HOST_DISCONNECTED', `host ${this.hostId} disconnected: ${reason}`));
      this.pending.delete(id);
    }
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

export type { VmStatusMsg };
