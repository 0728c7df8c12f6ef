// The change feed: whoever changes an object (an API write, an agent's report, a host's new state) says so
// here, and every controller watching that kind of object queues it. In one process this is a local fan
// out; replicas on PostgreSQL carry the same notes between processes (NOTIFY on `awan_changes`), so a
// write on any replica reaches the leader's controllers. A missed note is healed by each controller's resync.
import { MAX_PAYLOAD_BYTES, type NotifyBus } from '../store/pg-notify.ts';

export interface Change {
  /** What changed: 'vm', 'host', 'volume', 'task', … */
  kind: string;
  id: string;
}

export interface PublishOptions {
  /** Only this process's subscribers: for notes every replica derives by itself (from an event it sees). */
  local?: boolean;
}

export interface ChangeFeed {
  publish(change: Change, opts?: PublishOptions): void;
  subscribe(listener: (change: Change) => void): () => void;
}

export function createLocalChangeFeed(): ChangeFeed {
  const listeners = new Set<(change: Change) => void>();
  return {
    publish(change) {
      for (const l of listeners) l(change);
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

export const CHANGES_CHANNEL = 'awan_changes';

/**
 * The feed across replicas: a note goes to this process's subscribers at once and, batched per tick, to
 * the others as `kind:id` lines after a first line naming the sending process (which skips its own).
 */
export function createSharedChangeFeed(bus: NotifyBus): ChangeFeed {
  const local = createLocalChangeFeed();
  let queued: string[] = [];
  const send = () => {
    const notes = queued;
    queued = [];
    let payload = bus.origin;
    for (const n of notes) {
      if (payload.length + n.length + 1 > MAX_PAYLOAD_BYTES) {
        bus.notify(CHANGES_CHANNEL, payload);
        payload = bus.origin;
      }
      payload += `\n${n}`;
    }
    if (payload !== bus.origin) bus.notify(CHANGES_CHANNEL, payload);
  };
  bus.listen(CHANGES_CHANNEL, (payload) => {
    const lines = payload.split('\n');
    if (lines[0] === bus.origin) return;
    for (const line of lines.slice(1)) {
      const at = line.indexOf(':');
      if (at > 0) local.publish({ kind: line.slice(0, at), id: line.slice(at + 1) });
    }
  });
  return {
    publish(change, opts) {
      local.publish(change);
      if (opts?.local) return;
      queued.push(`${change.kind}:${change.id}`);
      if (queued.length === 1) setImmediate(send);
    },
    subscribe: local.subscribe,
  };
}
