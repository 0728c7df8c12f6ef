// PostgreSQL LISTEN/NOTIFY between control replicas: one dedicated client per process that listens, sends
// and reconnects with backoff. Channels are named per schema, so deployments (and test files) that share
// one database but not one schema do not hear each other. A note sent while the link is down is dropped:
// every reader has a way to catch up (controllers resync, the event reader reads SQL after its last seq).
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from '../../lib/logger.ts';

export interface NotifyBus {
  /** This process: notes carry it, so a process can skip its own. */
  readonly origin: string;
  notify(channel: string, payload: string): void;
  listen(channel: string, handler: (payload: string) => void): void;
  /** Called after every (re)connect, once listening: a reader catches up on what it may have missed. */
  onConnect(fn: () => void): void;
  close(): Promise<void>;
}

/** NOTIFY payloads must stay under 8000 bytes. */
export const MAX_PAYLOAD_BYTES = 7900;
const MAX_PENDING = 10_000;

export function createPgNotifyBus({ url, log }: { url: string; log: Logger }): NotifyBus {
  const origin = randomBytes(6).toString('hex');
  const handlers = new Map<string, ((payload: string) => void)[]>();
  const connectHooks: (() => void)[] = [];
  let pending: { channel: string; payload: string }[] = [];
  let client: pg.Client | null = null;
  let suffix: string | null = null;
  let closed = false;
  let backoffMs = 100;
  let retry: NodeJS.Timeout | null = null;
  let flushing = false;

  const full = (channel: string) => (suffix ? `${channel}.${suffix}` : channel);
  const quote = (ident: string) => `"${ident.replace(/"/g, '""')}"`;

  async function connect(): Promise<void> {
    if (closed) return;
    const c = new pg.Client({ connectionString: url });
    let dead = false;
    const lost = (err?: Error) => {
      if (dead) return;
      dead = true;
      if (client === c) client = null;
      c.removeAllListeners('notification');
      c.end().catch(() => undefined);
      if (closed) return;
      log.warn({ err, retryMs: backoffMs }, 'the PostgreSQL notification link dropped; reconnecting');
      retry = setTimeout(() => void connect(), backoffMs);
      retry.unref();
      backoffMs = Math.min(5000, backoffMs * 2);
    };
    c.on('error', (err) => lost(err));
    c.on('end', () => lost());
    try {
      await c.connect();
      const schema = (await c.query<{ s: string }>('select current_schema() as s')).rows[0]?.s ?? 'public';
      suffix = schema === 'public' ? null : schema;
      c.on('notification', (m) => {
        for (const [channel, fns] of handlers) if (full(channel) === m.channel) for (const fn of fns) fn(m.payload ?? '');
      });
      for (const channel of handlers.keys()) await c.query(`listen ${quote(full(channel))}`);
      if (closed) return void c.end().catch(() => undefined);
      client = c;
      backoffMs = 100;
      for (const fn of connectHooks) fn();
      void flush();
    } catch (err) {
      lost(err as Error);
    }
  }

  async function flush(): Promise<void> {
    if (flushing || !client || pending.length === 0) return;
    flushing = true;
    const batch = pending;
    pending = [];
    try {
      const byChannel = new Map<string, string[]>();
      for (const n of batch) byChannel.set(n.channel, [...(byChannel.get(n.channel) ?? []), n.payload]);
      for (const [channel, payloads] of byChannel) {
        await client?.query('select pg_notify($1, p) from unnest($2::text[]) as p', [full(channel), payloads]);
      }
    } catch (err) {
      log.warn({ err, notes: batch.length }, 'could not send notifications');
    } finally {
      flushing = false;
      if (pending.length) setImmediate(() => void flush());
    }
  }

  void connect();
  return {
    origin,
    notify(channel, payload) {
      if (closed) return;
      if (pending.length >= MAX_PENDING) pending.shift();
      pending.push({ channel, payload });
      if (pending.length === 1) setImmediate(() => void flush());
    },
    listen(channel, handler) {
      const first = !handlers.has(channel);
      handlers.set(channel, [...(handlers.get(channel) ?? []), handler]);
      if (first && client) void client.query(`listen ${quote(full(channel))}`).catch((err: unknown) => log.warn({ err, channel }, 'could not listen'));
    },
    onConnect(fn) {
      connectHooks.push(fn);
      if (client) fn();
    },
    async close() {
      closed = true;
      if (retry) clearTimeout(retry);
      const c = client;
      client = null;
      await c?.end().catch(() => undefined);
    },
  };
}

/** Resolves once the bus has connected (or after `timeoutMs`), for a caller that wants to start listening first. */
export function connected(bus: NotifyBus, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, timeoutMs);
    t.unref();
    bus.onConnect(() => {
      clearTimeout(t);
      resolve();
    });
  });
}
