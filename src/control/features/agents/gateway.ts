// The agents' entry: the HTTP join call and the WebSocket every agent keeps open to control.
import type { Kysely } from 'kysely';
import type { Logger } from '../../../lib/logger.ts';
import { JoinRequestSchema, JoinResponseSchema, type PoolRefMsg, parseAgentMessage } from '../../../protocol/messages.ts';
import { AppError } from '../../errors.ts';
import { bearerToken } from '../../http/roles.ts';
import type { App } from '../../http/types.ts';
import type { ReplicaDirectory } from '../../leader/directory.ts';
import type { Leadership } from '../../leader/elector.ts';
import type { Metrics } from '../../metrics.ts';
import type { Database } from '../../store/schema.ts';
import type { HostRegistry } from '../hosts/registry.ts';
import type { HostService } from '../hosts/service.ts';

export interface GatewayDeps {
  hosts: HostService;
  registry: HostRegistry;
  log: Logger;
  metrics: Metrics;
  heartbeatIntervalMs: number;
  /** The shared pools every agent is told to report on. */
  sharedPools?: () => PoolRefMsg[];
  db: Kysely<Database>;
  leadership: Leadership;
  /** The epoch commands on a new connection carry. */
  epoch: () => number;
  /** True once this replica leads and has loaded what it needs to take agents' connections. */
  accepting: () => boolean;
  replicas: ReplicaDirectory;
  /** How long an agent waits before dialling again when no replica leads yet. */
  retryMs: number;
  /** Renews a host's lease in SQL while it looks for the leader; true when renewed. */
  extendLease: (hostId: string, ttlMs: number) => Promise<boolean>;
  leaseMs: number;
}

/** Close code after a `redirect`: this replica does not lead. */
export const NOT_LEADER_CLOSE = 4001;

export function agentGateway(app: App, deps: GatewayDeps): void {
  const { hosts, registry, log } = deps;

  app.post('/api/v1/agent/join', {
    config: { role: 'agent' },
    schema: { tags: ['agent'], security: [], body: JoinRequestSchema, response: { 201: JoinResponseSchema } },
  }, async (req, reply) => reply.code(201).send(await hosts.join(req.body)));

  app.get('/api/v1/agent/connect', {
    config: { role: 'agent' },
    websocket: true,
    preValidation: async (req) => {
      const credential = bearerToken(req);
      const hostId = credential ? await hosts.authenticateAgent(credential) : undefined;
      if (!hostId) throw new AppError('UNAUTHORIZED', 'the host credential is not valid');
      (req as { agentHostId?: string }).agentHostId = hostId;
      // A host that joined through another replica is not in this one's table yet.
      if (deps.accepting() && !registry.get(hostId)) {
        const row = await deps.db.selectFrom('hosts').selectAll().where('id', '=', hostId).executeTakeFirst();
        if (row) registry.add(row);
      }
    },
    schema: { hide: true },
  }, async (socket, req) => {
    const hostId = (req as { agentHostId?: string }).agentHostId!;
    const { leader, replicas } = deps.replicas.view;
    if (!deps.accepting() || !registry.get(hostId)) {
      // Only the leader talks to agents: tell this one where the leader is (or to come back) and hang up.
      // Its lease is renewed meanwhile, so a change of leader does not make hosts stop their HA VMs.
      const renewed = await deps.extendLease(hostId, deps.leaseMs).catch((err: unknown) => {
        log.warn({ err, hostId }, 'could not renew the lease of a host looking for the leader');
        return false;
      });
      socket.send(JSON.stringify({ type: 'redirect', ...(leader ? { leader } : {}), replicas, retryMs: deps.retryMs, ...(renewed ? { leaseMs: deps.leaseMs } : {}) }));
      socket.close(NOT_LEADER_CLOSE, 'not the leader');
      return;
    }
    const conn = registry.attach(hostId, socket, deps.epoch());
    const hostLog = log.child({ hostId });
    conn.send({
      type: 'welcome', hostId, heartbeatIntervalMs: deps.heartbeatIntervalMs, epoch: conn.epoch, ...(leader ? { leader } : {}), replicas,
      ...(deps.sharedPools ? { pools: deps.sharedPools() } : {}),
    });
    let refused = 0;
    let queue: Promise<void> = Promise.resolve();
    socket.on('message', (data) => {
      const parsed = parseAgentMessage(data.toString());
      if (!parsed.ok) {
        // A bad message is logged and dropped; a flood of them ends the connection.
        hostLog.warn({ error: parsed.error }, 'refused a message from an agent');
        if (++refused > 100) socket.close(1008, 'too many invalid messages');
        return;
      }
      if (parsed.message.type === 'heartbeat') deps.metrics.heartbeats.inc();
      const message = parsed.message;
      // One message at a time per agent, in the order sent: a VM report must not overtake the hello before it.
      queue = queue.then(() => registry.handle(hostId, conn, message)).catch((err: unknown) => hostLog.error({ err }, 'could not handle an agent message'));
    });
    socket.on('close', () => void registry.detach(hostId, conn, 'socket closed').catch((err: unknown) => hostLog.error({ err }, 'detach failed')));
    socket.on('error', (err) => hostLog.warn({ err }, 'agent socket error'));
  });
}
