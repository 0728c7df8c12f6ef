// What agents are told about the control replicas: the leader's URL and every live replica's, refreshed from
// the database once a round of the election loop, so the agents' endpoint answers without a query.
import type { Logger } from '../../lib/logger.ts';
import type { Leadership } from './elector.ts';

export interface ReplicaView {
  leader?: string;
  /** Live replicas' URLs, the leader's first. */
  replicas: string[];
}

export type ReplicaDirectory = ReturnType<typeof createReplicaDirectory>;

export function createReplicaDirectory(leadership: Leadership, log: Logger, selfUrl: () => string | undefined) {
  let view: ReplicaView = { replicas: [] };
  const listeners = new Set<(view: ReplicaView) => void>();
  let refreshing: Promise<void> | null = null;

  async function load(): Promise<ReplicaView> {
    const [leader, live] = await Promise.all([leadership.single ? undefined : leadership.leader(), leadership.replicas()]);
    const self = selfUrl();
    const leaderUrl = leadership.isLeader ? self : leader?.url || undefined;
    const urls = [...new Set([leaderUrl, ...live.map((r) => r.url), leadership.isLeader ? undefined : self].filter((u): u is string => !!u))];
    return { ...(leaderUrl ? { leader: leaderUrl } : {}), replicas: urls };
  }

  return {
    get view(): ReplicaView {
      // Before the first refresh (or on SQLite, where nothing else runs) this replica is all there is.
      if (view.replicas.length === 0) {
        const self = selfUrl();
        if (self) return leadership.isLeader ? { leader: self, replicas: [self] } : { replicas: [self] };
      }
      return view;
    },
    /** Reads the replicas again; listeners hear of it when the set or the leader changed. */
    refresh(): Promise<void> {
      refreshing ??= load()
        .then((next) => {
          const changed = next.leader !== view.leader || next.replicas.join(' ') !== view.replicas.join(' ');
          view = next;
          if (changed) for (const l of listeners) l(next);
        })
        .catch((err: unknown) => log.warn({ err }, 'could not read the control replicas'))
        .finally(() => {
          refreshing = null;
        });
      return refreshing;
    },
    onChange(listener: (view: ReplicaView) => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
