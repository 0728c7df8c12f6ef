// The live table of hosts: who is connected, when each last beat, what VMs each reports. Heartbeats touch
// only memory. On the leader this table is the source of host status: state transitions and facts are
// written at once, the rest (heartbeat, connection, free memory, lease) in one batch a second, only for
// hosts whose status changed. On a follower the table mirrors SQL (refreshed each second and on a host's
// change note) and never writes.
import type { WebSocket } from 'ws';
import type { Logger } from '../../../lib/logger.ts';
import type { AgentMessage, HostFactsMsg, PoolReportMsg, VmStatusMsg } from '../../../protocol/messages.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { HostRow } from '../../store/schema.ts';
import { type FlapPolicy, defaultFlapPolicy, liftReason, quarantineReason, staysOut, withFailure } from '../../ha/flap-quarantine.ts';
import { AgentConnection } from '../agents/connection.ts';
import type { EventService } from '../events/service.ts';
import { type HostState, canTransition } from './model.ts';
import { type HostStatus, type HostStore, specColumns } from './store.ts';

export interface LiveHost {
  row: HostRow;
  /** Set once the agent's hello has reported its VMs: until then `vms` says nothing about the host. */
  connection: AgentConnection | null;
  /** A connection whose hello has not arrived yet. */
  attaching: AgentConnection | null;
  /** The liveness clock: the last beat, or when this process began to wait for the host. */
  lastHeartbeatMs: number | null;
  /** When the agent was last heard from (a real beat, not a grace period). */
  heardAtMs: number | null;
  memoryFreeMiB: number;
  /** RAM the host serves to other hosts' VMs, as its last heartbeat said. */
  memoryLentMiB?: number;
  vms: Map<string, VmStatusMsg>;
  /**
   * Until when the host may run its HA VMs: each beat renews it for `leaseMs`, and the agent, which counts
   * from when it sent the beat, stops them itself when it runs out. Never earlier than what SQL holds.
   */
  leaseExpiresMs: number;
}

export interface HostRegistryDeps {
  store: HostStore;
  events: EventService;
  capacity: CapacityIndex;
  changes: ChangeFeed;
  log: Logger;
  heartbeatIntervalMs: number;
  /** Missed intervals before a host is unreachable. */
  missedHeartbeats?: number;
  /** The leader epoch status writes carry; a write never overwrites one of a higher epoch. 0 alone. */
  epoch?: () => number;
  /** How often the leader writes changed host status to SQL. */
  statusFlushMs?: number;
  /** How often a follower re-reads hosts from SQL. */
  followRefreshMs?: number;
  /** How long a beat keeps a host's lease (default 5 s). */
  leaseMs?: number;
  /** When a host that fails again and again is quarantined on its return. */
  flaps?: FlapPolicy;
}

type Mode = 'idle' | 'leading' | 'following';

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export class HostRegistry {
  private readonly hosts = new Map<string, LiveHost>();
  private readonly vmListeners = new Set<(hostId: string, vmIds: string[]) => void>();
  private readonly hostListeners = new Set<(hostId: string, state: HostState) => void>();
  private readonly poolListeners = new Set<(hostId: string, pools: PoolReportMsg[]) => Promise<void>>();
  private readonly consoleListeners = new Map<string, Set<(data: string) => void>>();
  private timers: NodeJS.Timeout[] = [];
  private mode: Mode = 'idle';
  /** Status writes of this process go one at a time, so its own writes never race each other. */
  private writes: Promise<unknown> = Promise.resolve();
  private deposedWarned = false;
  /** Once control shuts down, connections closing are not host failures. */
  private stopped = false;
  private readonly unsubscribe: () => void;

  constructor(private readonly deps: HostRegistryDeps) {
    // A host's spec changed (here or on another replica), or it joined elsewhere: take the new row.
    this.unsubscribe = deps.changes.subscribe((c) => {
      if (c.kind !== 'host' || this.mode === 'idle') return;
      deps.store.get(c.id).then((row) => row && this.applyRow(row), (err: unknown) => deps.log.warn({ err, hostId: c.id }, 'could not reload a host'));
    });
  }

  get leading(): boolean {
    return this.mode === 'leading';
  }

  get leaseMs(): number {
    return this.deps.leaseMs ?? 5000;
  }

  private get limitMs(): number {
    return this.deps.heartbeatIntervalMs * (this.deps.missedHeartbeats ?? 2.5);
  }

  /** This process leads: load every host, give agents the usual grace to (re)connect, watch their beats. */
  async lead(): Promise<void> {
    this.clearTimers();
    const rows = await this.deps.store.all();
    const now = Date.now();
    this.hosts.clear();
    for (const row of rows) {
      const heard = row.last_heartbeat_at ? Date.parse(row.last_heartbeat_at) : null;
      // A lease an earlier leader granted ran from a beat sent before this process led: a full lease from
      // now outlasts it, so no host is declared failed while it may still run its VMs.
      const lease = Math.max(now + this.leaseMs, row.lease_expires_at ? Date.parse(row.lease_expires_at) : 0);
      this.hosts.set(row.id, { row, connection: null, attaching: null, lastHeartbeatMs: now, heardAtMs: heard, memoryFreeMiB: row.memory_free_mib, vms: new Map(), leaseExpiresMs: lease });
      this.index(row.id);
    }
    this.mode = 'leading';
    this.deposedWarned = false;
    const period = Math.max(10, Math.floor(this.deps.heartbeatIntervalMs / 4));
    this.every(period, () => this.checkHeartbeats());
    this.every(this.deps.statusFlushMs ?? 1000, () => this.flush());
  }

  /** Another process leads: drop agent connections, mirror SQL. */
  async follow(): Promise<void> {
    this.clearTimers();
    this.mode = 'following';
    for (const h of this.hosts.values()) {
      h.connection?.close('this control replica no longer leads');
      h.attaching?.close('this control replica no longer leads');
      h.connection = h.attaching = null;
      h.vms = new Map();
    }
    await this.refresh();
    this.every(this.deps.followRefreshMs ?? 1000, () => this.refresh());
  }

  /** Kept for callers of the single-process API: load and lead. */
  async load(): Promise<void> {
    await this.lead();
  }

  start(): void {
    // lead() already watches heartbeats.
  }

  stop(): void {
    this.stopped = true;
    this.clearTimers();
    this.unsubscribe();
    for (const h of this.hosts.values()) h.connection?.close('control is shutting down');
  }

  /** Waits for status writes under way (and, when leading, writes what changed). */
  async flushNow(): Promise<void> {
    if (this.leading) await this.flush();
    await this.writes;
  }

  get(id: string): LiveHost | undefined {
    return this.hosts.get(id);
  }

  all(): LiveHost[] {
    return [...this.hosts.values()];
  }

  /** True while a host that SQL calls ready has not reconnected within its grace (just after taking the lead). */
  settling(): boolean {
    const now = Date.now();
    for (const h of this.hosts.values()) {
      if (h.connection || (h.row.state !== 'ready' && h.row.state !== 'joining')) continue;
      if (h.lastHeartbeatMs !== null && now - h.lastHeartbeatMs <= this.limitMs) return true;
    }
    return false;
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

  /** The storage pools an agent reports it reaches. */
  onPools(listener: (hostId: string, pools: PoolReportMsg[]) => Promise<void>): void {
    this.poolListeners.add(listener);
  }

  onHostState(listener: (hostId: string, state: HostState) => void): void {
    this.hostListeners.add(listener);
  }

  /** A host that just joined (its row was written by the join call). */
  add(row: HostRow): void {
    this.hosts.set(row.id, { row, connection: null, attaching: null, lastHeartbeatMs: Date.now(), heardAtMs: null, memoryFreeMiB: row.memory_free_mib, vms: new Map(), leaseExpiresMs: Date.now() + this.leaseMs });
    this.index(row.id);
  }

  /**
   * A row read from SQL. A follower takes it whole; the leader takes only its spec (maintenance, labels,
   * zone, drain), since the status in SQL is what this process wrote, or older.
   */
  applyRow(row: HostRow): void {
    const host = this.hosts.get(row.id);
    if (!host) return this.add(row);
    if (!this.leading) {
      host.row = row;
      host.memoryFreeMiB = row.memory_free_mib;
    } else if (row.generation > host.row.generation) {
      const spec: Record<string, unknown> = {};
      for (const k of specColumns) spec[k] = row[k];
      host.row = { ...host.row, ...(spec as Partial<HostRow>) };
    } else return;
    this.index(row.id);
  }

  attach(hostId: string, socket: WebSocket, epoch = 0): AgentConnection {
    const host = this.hosts.get(hostId);
    if (!host) throw new Error(`unknown host ${hostId}`);
    host.connection?.close('replaced by a new connection');
    host.attaching?.close('replaced by a new connection');
    host.connection = null;
    const conn = new AgentConnection(hostId, socket, this.deps.log, epoch);
    host.attaching = conn;
    return conn;
  }

  async detach(hostId: string, conn: AgentConnection, reason: string): Promise<void> {
    const host = this.hosts.get(hostId);
    conn.close(reason);
    if (host?.attaching === conn) host.attaching = null;
    if (!host || host.connection !== conn) return;
    host.connection = null;
    // A closed socket is the first sign of a dead agent; a quick reconnect makes the host ready again.
    await this.transition(hostId, 'unreachable', `agent disconnected: ${reason}`);
  }

  async handle(hostId: string, conn: AgentConnection, msg: AgentMessage): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host || (host.connection !== conn && host.attaching !== conn)) return;
    if (msg.type !== 'hello' && host.connection !== conn) return;
    switch (msg.type) {
      case 'heartbeat':
        host.lastHeartbeatMs = host.heardAtMs = Date.now();
        host.memoryFreeMiB = msg.memoryFreeMiB;
        host.memoryLentMiB = msg.memoryLentMiB;
        this.renewLease(host, conn, msg.seq);
        if (host.row.state !== 'ready') await this.cameBack(hostId, 'heartbeats resumed');
        return;
      case 'hello':
        host.lastHeartbeatMs = host.heardAtMs = Date.now();
        await this.updateFacts(host, msg.facts);
        if (host.attaching === conn) {
          host.attaching = null;
          host.connection = conn;
        } else if (host.connection !== conn) return;
        this.replaceVms(host, msg.vms, true);
        this.renewLease(host, conn);
        await this.cameBack(hostId, 'agent connected');
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
      case 'pools':
        for (const l of this.poolListeners) await l(hostId, msg.pools);
        return;
    }
  }

  /**
   * Grants the host another lease and tells its agent, which counts it from when it sent the beat
   * (`seq`; none for its hello). Only a process that leads grants: a deposed one's word is worth nothing.
   */
  private renewLease(host: LiveHost, conn: AgentConnection, seq?: number): void {
    if (!this.leading || this.stopped) return;
    host.leaseExpiresMs = Math.max(host.leaseExpiresMs, Date.now() + this.leaseMs);
    conn.send({ type: 'lease', ttlMs: this.leaseMs, ...(seq === undefined ? {} : { seq }) });
  }

  async transition(hostId: string, to: HostState, why: string, also: Partial<HostStatus> = {}): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host || this.stopped || !this.leading) return;
    const from = host.row.state as HostState;
    if (from === to || !canTransition(from, to)) return;
    const row = await this.writeStatus(host, { ...this.liveStatus(host), state: to, state_reason: why, failed_at: null, ...also });
    if (!row) return;
    await this.announce(host, row, from, to, why);
  }

  /** The power fence switched the host off for this failure: said in its status, so a new leader knows it. */
  async notePoweredOff(hostId: string, failedAt: string): Promise<void> {
    const host = this.hosts.get(hostId);
    if (!host || this.stopped || !this.leading || host.row.failed_at !== failedAt) return;
    await this.writeStatus(host, { power_fenced_for: failedAt });
  }

  private get flaps(): FlapPolicy {
    return this.deps.flaps ?? defaultFlapPolicy;
  }

  /**
   * The agent is heard from again: the host is ready, unless it failed too often lately (quarantined on
   * its return, and it stays so), or an admin fenced it.
   */
  private async cameBack(hostId: string, why: string): Promise<void> {
    const host = this.hosts.get(hostId)!;
    const { state } = host.row;
    if (state === 'fenced' || state === 'quarantined') return;
    const now = Date.now();
    if (state === 'failed' && staysOut(host.row, now, this.flaps)) {
      const since = host.row.quarantined_at ? Date.parse(host.row.quarantined_at) : now;
      return this.transition(hostId, 'quarantined', quarantineReason(host.row, since, this.flaps), { quarantined_at: new Date(since).toISOString() });
    }
    await this.transition(hostId, 'ready', why);
  }

  /** A quarantined host: its beats are watched (it stays quarantined without them), and its quarantine ends when due. */
  private async watchQuarantine(host: LiveHost, now: number): Promise<void> {
    if (host.connection && host.lastHeartbeatMs !== null && now - host.lastHeartbeatMs > this.limitMs) {
      host.connection.close('heartbeats missed');
      host.connection = null;
    }
    const why = liftReason(host.row, now, this.flaps, !!host.connection);
    if (why) await this.transition(host.row.id, host.connection ? 'ready' : 'unreachable', why, { quarantined_at: null, recent_failures: null });
  }

  /** A state change written: logged, an event, and the listeners told. */
  private async announce(host: LiveHost, row: HostRow, from: HostState, to: HostState, why: string): Promise<void> {
    const hostId = row.id;
    this.index(hostId);
    this.deps.log.info({ hostId, host: row.name, from, to, why }, 'host state changed');
    await this.deps.events.emit({ type: `host.${to}`, objectKind: 'host', objectId: hostId, message: `host ${row.name} is ${to}: ${why}`, data: { from, to } });
    for (const l of this.hostListeners) l(hostId, to);
    this.deps.changes.publish({ kind: 'host', id: hostId });
  }

  /** The status fields that follow from live data (not the state, which transitions decide). */
  private liveStatus(h: LiveHost): Partial<HostStatus> {
    return {
      connected: h.connection ? 1 : 0,
      last_heartbeat_at: iso(h.heardAtMs),
      lease_expires_at: iso(h.leaseExpiresMs),
      memory_free_mib: h.memoryFreeMiB,
      vm_count: [...h.vms.values()].filter((v) => v.state !== 'incoming').length,
      memory_allocated_mib: this.deps.capacity.usage(h.row.id)?.usedMiB ?? 0,
    };
  }

  /**
   * One status write, compare-and-set on the status version this process last saw. A lost write means
   * another process wrote: if that was a newer leader (higher epoch) this one stops writing that host;
   * otherwise (an older epoch, e.g. this process's predecessor) it takes the version and writes again.
   */
  private writeStatus(host: LiveHost, patch: Partial<HostStatus>): Promise<HostRow | undefined> {
    const run = async (): Promise<HostRow | undefined> => {
      const epoch = this.deps.epoch?.() ?? 0;
      for (let attempt = 0; attempt < 2; attempt++) {
        const row = await this.deps.store.updateStatus({ id: host.row.id, statusVersion: host.row.status_version, patch }, epoch);
        if (row) {
          host.row = row;
          return row;
        }
        if (!(await this.adopt(host, epoch))) return undefined;
      }
      return undefined;
    };
    const next = this.writes.then(run, run);
    this.writes = next.catch(() => undefined);
    return next;
  }

  /** After a lost status write: takes SQL's version unless a newer leader wrote it. */
  private async adopt(host: LiveHost, epoch: number): Promise<boolean> {
    const fresh = await this.deps.store.get(host.row.id);
    if (!fresh) return false;
    if (fresh.status_epoch > epoch) {
      if (!this.deposedWarned) this.deps.log.warn({ hostId: fresh.id, epoch, theirs: fresh.status_epoch }, 'a newer leader writes host status; this process no longer does');
      this.deposedWarned = true;
      return false;
    }
    const spec: Record<string, unknown> = {};
    for (const k of specColumns) spec[k] = fresh[k];
    host.row = { ...host.row, ...(spec as Partial<HostRow>), status_version: fresh.status_version, status_epoch: fresh.status_epoch };
    // A replica that does not lead may have renewed the lease: never write it back shorter.
    if (fresh.lease_expires_at) host.leaseExpiresMs = Math.max(host.leaseExpiresMs, Date.parse(fresh.lease_expires_at));
    return true;
  }

  /** Writes, in one batch, the status of every host whose live status differs from what SQL holds. */
  private async flush(): Promise<void> {
    if (!this.leading || this.stopped) return;
    const run = async () => {
      const epoch = this.deps.epoch?.() ?? 0;
      const writes = [];
      for (const h of this.hosts.values()) {
        const live = this.liveStatus(h);
        const patch: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(live)) if (h.row[k as keyof HostRow] !== v) patch[k] = v;
        if (Object.keys(patch).length) writes.push({ id: h.row.id, statusVersion: h.row.status_version, patch: patch as Partial<HostStatus> });
      }
      const { written, lost } = await this.deps.store.updateStatusBatch(writes, epoch);
      for (const row of written) {
        const h = this.hosts.get(row.id);
        if (h) h.row = row;
      }
      for (const id of lost) {
        const h = this.hosts.get(id);
        if (h) await this.adopt(h, epoch);
      }
    };
    const next = this.writes.then(run, run);
    this.writes = next.catch((err: unknown) => this.deps.log.warn({ err }, 'could not write host status'));
    await this.writes;
  }

  /** A follower's mirror of SQL. */
  private async refresh(): Promise<void> {
    if (this.mode !== 'following') return;
    for (const row of await this.deps.store.all()) this.applyRow(row);
  }

  private every(ms: number, fn: () => Promise<void>): void {
    const t = setInterval(() => void fn().catch((err: unknown) => this.deps.log.warn({ err }, 'host registry timer failed')), ms);
    t.unref();
    this.timers.push(t);
  }

  private clearTimers(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private async checkHeartbeats(): Promise<void> {
    const limit = this.limitMs;
    const now = Date.now();
    for (const host of this.hosts.values()) {
      if (['joining', 'ready', 'unreachable', 'quarantined'].includes(host.row.state) && now > host.leaseExpiresMs) {
        await this.leaseRanOut(host).catch((err: unknown) => this.deps.log.error({ err, hostId: host.row.id }, 'could not mark host failed'));
        continue;
      }
      if (host.row.state === 'quarantined') {
        await this.watchQuarantine(host, now).catch((err: unknown) => this.deps.log.error({ err, hostId: host.row.id }, 'could not lift a quarantine'));
        continue;
      }
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

  /**
   * The lease ran out: the host is failed, unless SQL holds a longer lease (a replica that does not lead
   * renewed it while the agent looked for the leader). Compare-and-set on the version read, so a renewal
   * that commits first wins and one that comes after finds the host failed and is refused.
   */
  private async leaseRanOut(host: LiveHost): Promise<void> {
    const fresh = await this.deps.store.get(host.row.id);
    if (!fresh || !this.leading) return;
    const inSql = fresh.lease_expires_at ? Date.parse(fresh.lease_expires_at) : 0;
    if (inSql > host.leaseExpiresMs) {
      host.leaseExpiresMs = inSql;
      return;
    }
    const from = host.row.state as HostState;
    if (!canTransition(from, 'failed')) return;
    host.connection?.close('its lease ran out');
    host.attaching?.close('its lease ran out');
    host.connection = host.attaching = null;
    const why = `no heartbeat since ${iso(host.heardAtMs) ?? 'control started'}; its lease ran out at ${iso(host.leaseExpiresMs)}`;
    const epoch = this.deps.epoch?.() ?? 0;
    const patch = { ...this.liveStatus(host), state: 'failed', state_reason: why, failed_at: new Date().toISOString(), recent_failures: withFailure(fresh, Date.now(), this.flaps) };
    const row = await this.deps.store.updateStatus({ id: fresh.id, statusVersion: fresh.status_version, patch }, epoch);
    if (!row) return; // someone wrote first: look again on the next tick
    host.row = row;
    this.index(row.id);
    await this.announce(host, row, from, 'failed', why);
  }

  private async updateFacts(host: LiveHost, facts: HostFactsMsg): Promise<void> {
    host.memoryFreeMiB = facts.memoryFreeMiB;
    const r = host.row;
    const caps = JSON.stringify(facts.capabilities);
    const same = r.cpus === facts.cpus && r.memory_mib === facts.memoryMiB && r.address === facts.address && r.capabilities === caps &&
      r.driver === facts.driver && r.accelerator === (facts.accelerator ?? null);
    if (same) return;
    await this.writeStatus(host, { cpus: facts.cpus, memory_mib: facts.memoryMiB, memory_free_mib: facts.memoryFreeMiB, address: facts.address, driver: facts.driver, accelerator: facts.accelerator ?? null, capabilities: caps });
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
      if (all || !prev || prev.state !== vm.state || prev.memoryActualMiB !== vm.memoryActualMiB || prev.migrating !== vm.migrating) changed.push(id);
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
