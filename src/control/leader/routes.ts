// GET /api/v1/replicas: the control replicas alive now and which one leads (any replica answers).
import { Type } from 'typebox';
import { type App, errors } from '../http/types.ts';
import type { ReplicaDirectory } from './directory.ts';
import type { Leadership } from './elector.ts';

const ReplicaSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  leader: Type.Boolean(),
  lastSeenAt: Type.Union([Type.String(), Type.Null()]),
});

const ReplicasSchema = Type.Object({
  /** The replica that answered. */
  self: Type.Object({ id: Type.String(), leader: Type.Boolean(), epoch: Type.Integer() }),
  leader: Type.Union([Type.Object({ id: Type.String(), url: Type.String(), epoch: Type.Integer() }), Type.Null()]),
  items: Type.Array(ReplicaSchema),
});

export function replicaRoutes(app: App, deps: { leadership: Leadership; replicas: ReplicaDirectory }): void {
  const { leadership } = deps;
  app.get('/api/v1/replicas', {
    config: { role: 'viewer' },
    schema: { tags: ['control'], response: { 200: ReplicasSchema, ...errors } },
  }, async () => {
    const [leader, live] = await Promise.all([leadership.leader(), leadership.replicas()]);
    const leaderId = leader?.id ?? (leadership.isLeader ? leadership.replicaId : undefined);
    return {
      self: { id: leadership.replicaId, leader: leadership.isLeader, epoch: leadership.epoch },
      leader: leader ? { id: leader.id, url: leader.url || (deps.replicas.view.leader ?? ''), epoch: leader.epoch } : null,
      items: live.map((r) => ({ id: r.id, url: r.url, leader: r.id === leaderId, lastSeenAt: r.lastSeenAtMs ? new Date(r.lastSeenAtMs).toISOString() : null })),
    };
  });
}
