// The change feed: whoever changes an object (an API write, an agent's report, a host's new state) says so
// here, and every controller watching that kind of object queues it. In one process this is a local fan
// out; replicas on PostgreSQL carry the same notes between processes, so a write on any replica reaches
// the leader's controllers. A missed note is healed by each controller's resync.

export interface Change {
  /** What changed: 'vm', 'host', 'volume', 'task', … */
  kind: string;
  id: string;
}

export interface ChangeFeed {
  publish(change: Change): void;
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
