// The live table of hosts: who is connected, when each last beat, what VMs each reports. Heartbeats touch
// only memory; SQL sees state transitions.
import type { Kysely } from 'kysely';
import type { WebSocket } from 'ws';
import type { Logger } from '../../../lib/logger.ts';
import type { AgentMessage, HostFactsMsg, VmStatusMsg } from '../../../protocol/messages.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { Database, HostRow } from '../../store/schema.ts';
import { AgentConnection } from '../agents/connection.ts';
import type { EventService } from '../events/service.ts';
import { type HostState, canTransition } from './model.ts';

export interface LiveHost {
  row: HostRow;
  connection: AgentConnection | null;
  lastHeartbeatMs: number | null;
  memoryFreeMiB: number;
  vms: Map<string, VmStatusMsg>;
}

export interface HostRegistryDeps {
  db: Kysely<Database>;
  events: EventService;
  capacity: CapacityIndex;
  log: Logger;
  heartbeatIntervalMs: number;
  /** Missed intervals before a host is unreachable. */
  missedHeartbeats?: number;
}

export class HostRegistry {
  private readonly hosts = new Map<string, LiveHost>();
  private readonly vmListeners = new Set<(hostId: string, vmIds: string[]) => void>();
  private readonly hostListeners = new Set<(hostId: string, state: HostState) => void>();
  private readonly consoleListeners = new Map<string, Set<(data: string) => void>>();
  private monitor: NodeJS.Timeout | null = null;
  /** Once control shuts down, connections closing are not host failures. */
  private stopped = false;

  constructor(private readonly deps: HostRegistryDeps) {}

  async load(): Promise<void> {
    const rows = await this.deps.db.selectFrom('hosts').selectAll().execute();
    const now = Date.now();
    for (const row of rows) {
      // Nobody is connected to a fresh process: give every agent the usual grace to reconnect.
      this.hosts.set(row.id, { row, connection: null, lastHeartbeatMs: now, memoryFreeMiB: row.memory_free_mib, vms: new Map() });
      this.index(row.id);
    }
  }

  start(): void {
    const period = Math.max(10, Math.floor(this.deps.heartbeatIntervalMs / 4));
    this.monitor = setInterval(() => void this.checkHeartbeats(), period);
    this.monitor.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.monitor) clearInterval(this.monitor);
    for (const h of this.hosts.values()) h.connection?.close('control is shutting down');
  }

  get(id: string): LiveHost | undefined {
    return this.hosts.get(id);
  }

  all(): LiveHost[] {
    return [...this.hosts.values()];
  }

  onVmsReported(listener: (hostId: string, vmIds: string[]) => void): void {
    this.vmListeners.add(listener);
  }

  /** Console output of one VM, as its agent streams it while attached. */
  onConsole(vmId: string, listener: (data: string) => void): () => void {
    let set = this.consoleListeners.get(vmId);
    if (!set) this.consoleListeners.set(vmId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.consoleListeners.delete(vmId);
    };
  }

  onHostState(listener: (hostId: string, state: HostState) => void): void {
    this.hostListeners.add(listener);
  }

  /** A host that just joined (its row was written by the join call). */
  add(row: HostRow): void {
    this.hosts.set(row.id, { row, connection: null, lastHeartbeatMs: Date.now(), memoryFreeMiB: row.memory_free_mib, vms: new Map() });
    this.index(row.id);
  }

  attach(hostId: string, socket: WebSocket): AgentConnection {
    const host = this.hosts.get(hostId);
    if (!host) throw new Error(`unknown host ${hostId}`);
    host.connection?.close('replaced by a new connection');
    const conn = new AgentConnection(hostId, socket, this.deps.log);
    host.connection = conn;
    return conn;
  }

  async detach(hostId: string, conn: AgentConnection, reason: string): Promise<void> {
    const host = this.hosts.get(hostId);
    conn.close(reason);
    if (!host || host.connection !== conn) return;
    host.connection = null;
    // A closed socket is the first sign of a dead agent; a quick reconnect makes the host ready again.
    await this.transition(hostId, 'unreachable', `agent disconnected: ${reason}`);
  }

  async handle(hostId: string, conn: AgentConnection, msg: AgentMessage): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host || host.connection !== conn) return;
    switch (msg.type) {
      case 'heartbeat':
        host.lastHeartbeatMs = Date.now();
        host.memoryFreeMiB = msg.memoryFreeMiB;
        if (host.row.state !== 'ready' && host.row.state !== 'fenced') await this.transition(hostId, 'ready', 'heartbeats resumed');
        return;
      case 'hello':
        host.lastHeartbeatMs = Date.now();
        await this.updateFacts(host, msg.facts);
        this.replaceVms(host, msg.vms, true);
        if (host.row.state !== 'fenced') await this.transition(hostId, 'ready', 'agent connected');
        return;
      case 'vms':
        if (msg.full) this.replaceVms(host, msg.vms, false);
        else {
          for (const vm of msg.vms) host.vms.set(vm.id, vm);
          this.notifyVms(hostId, msg.vms.map((v) => v.id));
        }
        return;
      case 'result':
        conn.handleResult(msg.id, msg.ok, msg.ok ? msg.value : undefined, msg.ok ? undefined : msg.error);
        return;
      case 'progress':
        conn.handleProgress(msg.id, msg.fraction, msg.message);
        return;
      case 'console':
        for (const l of this.consoleListeners.get(msg.vmId) ?? []) l(msg.data);
        return;
    }
  }

  async setLabels(hostId: string, labels: Record<string, string>, zone: string | null | undefined): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host) return;
    host.row = await this.deps.db
      .updateTable('hosts')
      .set({ labels: JSON.stringify(labels), ...(zone !== undefined ? { zone } : {}), generation: host.row.generation + 1, updated_at: new Date().toISOString() })
      .where('id', '=', hostId)
      .returningAll()
      .executeTakeFirstOrThrow();
    this.index(hostId);
  }

  async setMaintenance(hostId: string, on: boolean): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host) return;
    host.row = await this.deps.db
      .updateTable('hosts')
      .set({ maintenance: on ? 1 : 0, generation: host.row.generation + 1, updated_at: new Date().toISOString() })
      .where('id', '=', hostId)
      .returningAll()
      .executeTakeFirstOrThrow();
    this.index(hostId);
  }

  async transition(hostId: string, to: HostState, why: string): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host || this.stopped) return;
    const from = host.row.state as HostState;
    if (from === to || !canTransition(from, to)) return;
    const now = new Date().toISOString();
    host.row = await this.deps.db
      .updateTable('hosts')
      .set({
        state: to,
        generation: host.row.generation + 1,
        updated_at: now,
        last_heartbeat_at: host.lastHeartbeatMs ? new Date(host.lastHeartbeatMs).toISOString() : null,
      })
      .where('id', '=', hostId)
      .returningAll()
      .executeTakeFirstOrThrow();
    this.index(hostId);
    this.deps.log.info({ hostId, host: host.row.name, from, to, why }, 'host state changed');
    await this.deps.events.emit({ type: `host.${to}`, objectKind: 'host', objectId: hostId, message: `host ${host.row.name} is ${to}: ${why}`, data: { from, to } });
    for (const l of this.hostListeners) l(hostId, to);
  }

  private async checkHeartbeats(): Promise<void> {
    const limit = this.deps.heartbeatIntervalMs * (this.deps.missedHeartbeats ?? 2.5);
    const now = Date.now();
    for (const host of this.hosts.values()) {
      if (host.row.state !== 'ready' && host.row.state !== 'joining') continue;
      if (host.lastHeartbeatMs !== null && now - host.lastHeartbeatMs > limit) {
        host.connection?.close('heartbeats missed');
        host.connection = null;
        await this.transition(host.row.id, 'unreachable', `no heartbeat for ${now - host.lastHeartbeatMs} ms`).catch((err) =>
          this.deps.log.error({ err, hostId: host.row.id }, 'could not mark host unreachable'),
        );
      }
    }
  }

  private async updateFacts(host: LiveHost, facts: HostFactsMsg): Promise<void> {
    host.memoryFreeMiB = facts.memoryFreeMiB;
    const r = host.row;
    const caps = JSON.stringify(facts.capabilities);
    const same = r.cpus === facts.cpus && r.memory_mib === facts.memoryMiB && r.address === facts.address && r.capabilities === caps &&
      r.driver === facts.driver && r.accelerator === (facts.accelerator ?? null);
    if (same) return;
    host.row = await this.deps.db
      .updateTable('hosts')
      .set({ cpus: facts.cpus, memory_mib: facts.memoryMiB, memory_free_mib: facts.memoryFreeMiB, address: facts.address, driver: facts.driver, accelerator: facts.accelerator ?? null, capabilities: caps, updated_at: new Date().toISOString() })
      .where('id', '=', r.id)
      .returningAll()
      .executeTakeFirstOrThrow();
    this.index(r.id);
  }

  /**
   * Takes a host's full VM list. After a (re)connect every VM is looked at again; the periodic full report
   * only wakes the reconciler for VMs whose report changed (a lost delta), not for every VM on the host.
   */
  private replaceVms(host: LiveHost, vms: VmStatusMsg[], all: boolean): void {
    const next = new Map(vms.map((v) => [v.id, v]));
    const changed: string[] = [];
    for (const [id, vm] of next) {
      const prev = host.vms.get(id);
      if (all || !prev || prev.state !== vm.state || prev.memoryActualMiB !== vm.memoryActualMiB) changed.push(id);
    }
    for (const id of host.vms.keys()) if (!next.has(id)) changed.push(id);
    host.vms = next;
    if (changed.length) this.notifyVms(host.row.id, changed);
  }

  private notifyVms(hostId: string, vmIds: string[]): void {
    for (const l of this.vmListeners) l(hostId, vmIds);
  }

  private index(hostId: string): void {
    const h = this.hosts.get(hostId)!;
    const r = h.row;
    const schedulable = r.state === 'ready' && r.maintenance === 0;
    this.deps.capacity.upsertHost({
      id: r.id,
      name: r.name,
      schedulable,
      notSchedulableReason: r.maintenance ? 'in maintenance' : `${r.state}`,
      cpus: r.cpus,
      memoryMiB: r.memory_mib,
      labels: JSON.parse(r.labels) as Record<string, string>,
    });
  }
}
