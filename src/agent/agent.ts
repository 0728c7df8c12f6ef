// Node Control: joins control once, then keeps one WebSocket to the leading control replica: facts and
// heartbeats out, commands in, and a report of every VM whenever one changes. It reconnects with backoff and
// re-reports everything; it knows every replica it was told of and goes to the leader whichever it dials.
// A command from a leader older than one it has seen (a lower epoch) is refused.
import { hostname } from 'node:os';
import WebSocket from 'ws';
import type { HypervisorDriver } from '../drivers/types.ts';
import type { Logger } from '../lib/logger.ts';
import {
  type AgentMessage,
  type ControlMessage,
  type JoinResponse,
  JoinResponseSchema,
  type VmStatusMsg,
  parseControlMessage,
} from '../protocol/messages.ts';
import { Compile } from 'typebox/compile';
import { type AgentCredentials, loadCredentials, loadEpoch, saveCredentials, saveEpoch } from './credentials.ts';
import { errorOf, execute } from './executor.ts';
import { type HostStorage, createFileStorage, createMemoryStorage } from './storage/index.ts';
import { DEFAULT_MEMORY_RESERVE_MIB } from './memory/lender.ts';
import { LeaseKeeper } from './fence/keeper.ts';
import { monotonicMs } from './fence/state.ts';
import type { PoolRefMsg } from '../protocol/messages.ts';

export interface AgentOptions {
  control: string;
  joinToken?: string;
  driver: HypervisorDriver;
  dataDir: string;
  name?: string;
  log: Logger;
  /** Full VM list every this many heartbeats, so a lost delta heals itself. */
  fullReportEvery?: number;
  maxBackoffMs?: number;
  /** Where this host's volumes live; by default files for QEMU, memory for the simulator. */
  storage?: HostStorage;
  /**
   * Dial only `control`, never the replica URLs control names: for a load balancer or a virtual address in
   * front of the replicas, which then forwards to the leader.
   */
  pinned?: boolean;
  /** Memory this host never lends to others (memoryExport); DEFAULT_MEMORY_RESERVE_MIB unless told. */
  memoryReserveMiB?: number;
}

/** A replica whose connection failed this recently is not dialled on another replica's word. */
const FAILED_RECENTLY_MS = 5000;
/** Redirects in a row before the agent backs off as after a failure. */
const MAX_REDIRECTS = 8;

const checkJoin = Compile(JoinResponseSchema);
const VERSION = '0.1.0';

export class Agent {
  private socket: WebSocket | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private reconnect: NodeJS.Timeout | null = null;
  private stopped = false;
  private attempts = 0;
  private seq = 0;
  private readonly inflight = new Map<string, AbortController>();
  /** Starts in progress, by VM. */
  private readonly booting = new Map<string, AbortController>();
  /** VMs this host sends away now: reported, so a leader that did not send the command knows the copy goes on. */
  private readonly sending = new Set<string>();
  private readonly consoles = new Set<string>();
  private unsubscribe: (() => void) | null = null;
  /** The hello on the current connection, sent or failed. */
  private introduced: Promise<void> = Promise.resolve();
  /** The shared pools control named in its welcome: reported with the local pool. */
  private sharedPools: PoolRefMsg[] = [];
  readonly storage: HostStorage;
  creds: AgentCredentials | undefined;
  connected = false;
  /** The highest leader epoch seen (persisted). */
  epoch = 0;
  /** Control replicas to dial, the leader's first; the URL given on the command line is always among them. */
  controls: string[] = [];
  /** The replica of the current (or last) connection, and whether it welcomed us. */
  dialled: string | undefined;
  private welcomed = false;
  private redirect: { leader?: string; retryMs: number } | null = null;
  private redirects = 0;
  private next: string | null = null;
  private readonly failedAt = new Map<string, number>();
  /** The host lease and placement tokens; made at start, once the data dir is known to be ours. */
  private lease: LeaseKeeper | undefined;
  /** When each beat still unanswered was sent, and the hello (monotonic ms): leases count from there. */
  private readonly beatsSent = new Map<number, number>();
  private helloSentAt = 0;

  constructor(private readonly opts: AgentOptions) {
    this.storage = opts.storage ?? (opts.driver.kind === 'qemu' ? createFileStorage(opts.dataDir) : createMemoryStorage().forHost(opts.dataDir));
  }

  get hostId(): string | undefined {
    return this.creds?.hostId;
  }

  async start(): Promise<void> {
    this.creds = loadCredentials(this.opts.dataDir);
    if (!this.creds) this.creds = await this.join();
    this.epoch = loadEpoch(this.opts.dataDir);
    this.lease = new LeaseKeeper(this.opts.dataDir, this.opts.driver, this.opts.log, (vmId) => void this.reportVm(vmId));
    this.lease.start();
    this.controls = unique([...(this.creds.controls ?? []), this.opts.control]);
    this.unsubscribe = this.opts.driver.subscribe((e) => {
      if (e.type === 'vm-state') this.send({ type: 'vms', full: false, vms: [this.report(e.vm)] });
      else if (e.type === 'console') {
        if (this.consoles.has(e.vmId)) this.send({ type: 'console', vmId: e.vmId, data: e.data });
      } else if (this.connected) {
        // A hello is the one message that carries facts; control takes a repeated one as a fresh report.
        this.hello().catch((err: unknown) => this.opts.log.warn({ err }, 'could not report new facts to control'));
      }
    });
    this.connect();
  }

  private async join(): Promise<AgentCredentials> {
    if (!this.opts.joinToken) throw new Error(`no credentials in ${this.opts.dataDir} and no --join-token given`);
    const facts = await this.opts.driver.facts();
    const name = this.opts.name ?? hostname();
    const res = await fetch(new URL('/api/v1/agent/join', this.opts.control), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ joinToken: this.opts.joinToken, name, facts }),
    });
    const body: unknown = await res.json().catch(() => undefined);
    if (res.status !== 201 || !checkJoin.Check(body)) {
      const message = (body as { error?: { message?: string } } | undefined)?.error?.message ?? `HTTP ${res.status}`;
      throw new Error(`joining ${this.opts.control} failed: ${message}`);
    }
    const joined = body as JoinResponse;
    const creds = { hostId: joined.hostId, credential: joined.credential, control: this.opts.control };
    saveCredentials(this.opts.dataDir, creds);
    this.opts.log.info({ hostId: joined.hostId, name }, 'joined control');
    return creds;
  }

  private connect(): void {
    if (this.stopped || !this.creds) return;
    const target = this.next ?? this.controls[0] ?? this.opts.control;
    this.next = null;
    this.dialled = target;
    this.welcomed = false;
    this.redirect = null;
    const url = new URL('/api/v1/agent/connect', target.replace(/^http/, 'ws'));
    const dialledAt = monotonicMs();
    // Redirects are the protocol's (a `redirect` message), not HTTP's: ws drops the credential on an HTTP
    // redirect to another port, and a replica that does not lead must say where the leader is.
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${this.creds.credential}` }, maxPayload: 1024 * 1024, followRedirects: false });
    this.socket = socket;
    socket.on('open', () => {
      this.introduced = this.hello().catch((err: unknown) => {
        // Without a hello control cannot trust this connection: drop it and try again.
        this.opts.log.error({ err }, 'could not describe this host to control');
        socket.terminate();
      });
    });
    socket.on('message', (data) => void this.onMessage(data.toString(), socket, dialledAt));
    socket.on('unexpected-response', (_req, res) => {
      this.opts.log.error({ status: res.statusCode }, 'control refused the connection');
      socket.terminate();
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.connected = false;
      this.consoles.clear(); // viewers attach again through the new connection
      this.socket = null;
      if (this.heartbeat) clearInterval(this.heartbeat);
      this.heartbeat = null;
      if (!this.redirect) this.failedAt.set(target, Date.now());
      this.scheduleReconnect(target);
    });
    socket.on('error', (err) => this.opts.log.warn({ err: err.message }, 'connection to control failed'));
  }

  /**
   * After a redirect: to the leader it names, unless that one just failed here (its lease has not expired
   * yet), in which case the same replica again after its retry period, until it or another one leads.
   * After a failure: the next replica in the list, with exponential backoff.
   */
  private scheduleReconnect(from: string): void {
    if (this.stopped) return;
    const jitter = 0.5 + Math.random() / 2;
    let delay: number;
    const r = this.redirect;
    if (r && ++this.redirects <= MAX_REDIRECTS) {
      const leader = !this.opts.pinned && r.leader && r.leader !== from && Date.now() - (this.failedAt.get(r.leader) ?? 0) > FAILED_RECENTLY_MS ? r.leader : undefined;
      this.next = leader ?? from;
      delay = leader ? 0 : r.retryMs * jitter;
    } else {
      this.redirects = 0;
      const i = this.controls.indexOf(from);
      this.next = this.controls[(i + 1) % this.controls.length] ?? this.opts.control;
      delay = Math.min(100 * 2 ** this.attempts++, this.opts.maxBackoffMs ?? 5000) * jitter;
    }
    this.reconnect = setTimeout(() => this.connect(), delay);
  }

  /** Takes what control says about the replicas: the leader first, then the others; kept with the credential. */
  private learnReplicas(leader: string | undefined, replicas: string[]): void {
    if (this.opts.pinned) return;
    const next = unique([...(leader ? [leader] : []), ...replicas]);
    if (next.length === 0 || !this.creds) return;
    const all = unique([...next, this.opts.control]);
    if (all.join(' ') === this.controls.join(' ') && (this.creds.controls ?? []).join(' ') === next.join(' ')) return;
    this.controls = all;
    this.creds = { ...this.creds, controls: next };
    try {
      saveCredentials(this.opts.dataDir, this.creds);
    } catch (err) {
      this.opts.log.warn({ err }, 'could not save the list of control replicas');
    }
  }

  /** Remembers a higher epoch before acting on it, so a restart does not forget it. */
  private seeEpoch(epoch: number): void {
    if (epoch <= this.epoch) return;
    this.epoch = epoch;
    saveEpoch(this.opts.dataDir, epoch);
  }

  private async hello(): Promise<void> {
    const [facts, vms] = await Promise.all([this.opts.driver.facts(), this.opts.driver.list()]);
    this.helloSentAt = monotonicMs();
    this.beatsSent.clear();
    this.send({ type: 'hello', facts, vms: vms.map((vm) => this.report(vm)), agentVersion: VERSION });
    this.connected = true;
  }

  private async onMessage(raw: string, socket: WebSocket, dialledAt: number): Promise<void> {
    if (socket !== this.socket) return;
    const parsed = parseControlMessage(raw);
    if (!parsed.ok) {
      this.opts.log.warn({ error: parsed.error }, 'refused a message from control');
      return;
    }
    const msg = parsed.message;
    switch (msg.type) {
      case 'welcome':
        if (msg.epoch < this.epoch) {
          // A replica that still believes it leads, after another one did: go elsewhere.
          this.opts.log.warn({ epoch: msg.epoch, seen: this.epoch, control: this.dialled }, `control's leader epoch is older than one already seen (kept in ${this.opts.dataDir}/control-epoch.json); trying another replica`);
          socket.close();
          return;
        }
        this.seeEpoch(msg.epoch);
        this.welcomed = true;
        this.attempts = 0;
        this.redirects = 0;
        this.learnReplicas(msg.leader, msg.replicas);
        if (this.heartbeat) clearInterval(this.heartbeat);
        this.heartbeat = setInterval(() => void this.beat(), msg.heartbeatIntervalMs);
        this.sharedPools = msg.pools ?? [];
        // After the hello: control takes nothing else from a connection before it (a report sent earlier is lost).
        void this.introduced.then(() => this.reportPools());
        return;
      case 'replicas':
        this.learnReplicas(msg.leader, msg.replicas);
        return;
      case 'redirect':
        if (msg.leaseMs) this.renewLease(dialledAt, msg.leaseMs);
        this.learnReplicas(msg.leader, msg.replicas);
        this.redirect = { ...(msg.leader ? { leader: msg.leader } : {}), retryMs: msg.retryMs };
        this.opts.log.info({ control: this.dialled, leader: msg.leader }, 'control replica does not lead');
        return;
      case 'command':
        return this.onCommand(msg);
      case 'lease': {
        const sentAt = msg.seq === undefined ? this.helloSentAt : this.beatsSent.get(msg.seq);
        if (msg.seq !== undefined) for (const seq of this.beatsSent.keys()) if (seq <= msg.seq) this.beatsSent.delete(seq);
        if (sentAt) this.renewLease(sentAt, msg.ttlMs);
        return;
      }
    }
  }

  private async onCommand(msg: Extract<ControlMessage, { type: 'command' }>): Promise<void> {
    const { id, command } = msg;
    if (msg.epoch < this.epoch) {
      this.opts.log.warn({ op: command.op, epoch: msg.epoch, seen: this.epoch }, 'refused a command from a deposed leader');
      this.send({ type: 'result', id, ok: false, error: { code: 'STALE_EPOCH', message: `command of leader epoch ${msg.epoch}; epoch ${this.epoch} leads now` } });
      return;
    }
    try {
      this.seeEpoch(msg.epoch);
    } catch (err) {
      // Acting on an epoch that a restart would forget could let an older leader's commands through later.
      this.send({ type: 'result', id, ok: false, error: errorOf(err) });
      return;
    }
    if (command.op === 'cancel') {
      this.inflight.get(command.commandId)?.abort();
      this.send({ type: 'result', id, ok: true });
      return;
    }
    try {
      this.checkPlacement(command);
    } catch (err) {
      this.send({ type: 'result', id, ok: false, error: errorOf(err) });
      return;
    }
    // A stop or delete of a VM that boots abandons the boot at once instead of waiting for it.
    if (command.op === 'stop' || command.op === 'delete') this.booting.get(command.vmId)?.abort();
    const abort = new AbortController();
    this.inflight.set(id, abort);
    if (command.op === 'start') this.booting.set(command.spec.id, abort);
    if (command.op === 'migrate') await this.markSending(command.vmId, true);
    try {
      const value = await execute(command, {
        driver: this.opts.driver,
        consoles: this.consoles,
        signal: abort.signal,
        progress: (fraction, message) => this.send({ type: 'progress', id, fraction, ...(message ? { message } : {}) }),
        storage: this.storage,
        address: async () => (await this.opts.driver.facts()).address,
        memoryReserveMiB: this.opts.memoryReserveMiB ?? DEFAULT_MEMORY_RESERVE_MIB,
      });
      if (command.op === 'delete') this.lease?.forget(command.vmId);
      this.send({ type: 'result', id, ok: true, ...(value === undefined ? {} : { value }) });
    } catch (err) {
      this.opts.log.warn({ op: command.op, err: errorOf(err) }, 'command failed');
      this.send({ type: 'result', id, ok: false, error: errorOf(err) });
    } finally {
      this.inflight.delete(id);
      if (command.op === 'start' && this.booting.get(command.spec.id) === abort) this.booting.delete(command.spec.id);
      if (command.op === 'migrate') await this.markSending(command.vmId, false);
    }
  }

  private renewLease(sentAt: number, ttlMs: number): void {
    try {
      this.lease?.renewed(sentAt, ttlMs);
    } catch (err) {
      this.opts.log.error({ err }, 'could not record the host lease');
    }
  }

  /**
   * Placement tokens: a start (or an incoming migration) records the VM's token before it runs here; a
   * stop or delete with an older token than this host has seen is refused.
   */
  private checkPlacement(command: Extract<ControlMessage, { type: 'command' }>['command']): void {
    if (!this.lease) return;
    if (command.op === 'start' || command.op === 'prepareIncoming') this.lease.place(command.spec.id, command.spec.token, command.spec.ha ?? false);
    else if (command.op === 'stop' || command.op === 'delete') this.lease.checkToken(command.vmId, command.token);
  }

  private async reportVm(vmId: string): Promise<void> {
    const vm = (await this.opts.driver.list().catch(() => [])).find((v) => v.id === vmId);
    if (vm) this.send({ type: 'vms', full: false, vms: [this.report(vm)] });
  }

  /** Reports the change at once; a VM gone from this host (handed over) needs no report, its driver made one. */
  private async markSending(vmId: string, on: boolean): Promise<void> {
    if (on) this.sending.add(vmId);
    else this.sending.delete(vmId);
    await this.reportVm(vmId);
  }

  /** Only the fields the protocol carries (drivers may keep more), and whether this host sends the VM away. */
  private report(vm: VmStatusMsg): VmStatusMsg {
    // A VM this host fenced reads as stopped with the reason, not as crashed (its QEMU was killed).
    const fenced = (vm.state === 'stopped' || vm.state === 'crashed') && this.lease?.fenced(vm.id);
    const token = this.lease?.tokenOf(vm.id);
    return {
      id: vm.id, name: vm.name, state: fenced ? 'stopped' : vm.state, cpus: vm.cpus, memoryMiB: vm.memoryMiB, memoryActualMiB: vm.memoryActualMiB,
      ...(vm.memoryUsedMiB !== undefined ? { memoryUsedMiB: vm.memoryUsedMiB } : {}),
      ...(vm.uptimeS !== undefined ? { uptimeS: vm.uptimeS } : {}),
      ...(fenced ? { reason: 'fenced: the host lease ran out' } : vm.reason !== undefined ? { reason: vm.reason } : {}),
      ...(this.sending.has(vm.id) ? { migrating: true } : {}),
      ...(token !== undefined ? { token } : {}),
      ...(vm.replicas ? { replicas: vm.replicas } : {}),
      ...(vm.remoteMemory ? { remoteMemory: vm.remoteMemory } : {}),
      ...(vm.swapTotalMiB !== undefined ? { swapTotalMiB: vm.swapTotalMiB } : {}),
      ...(vm.swapUsedMiB !== undefined ? { swapUsedMiB: vm.swapUsedMiB } : {}),
      ...(vm.majorFaults !== undefined ? { majorFaults: vm.majorFaults } : {}),
    };
  }

  private async beat(): Promise<void> {
    try {
      const facts = await this.opts.driver.facts();
      const seq = this.seq++;
      this.beatsSent.set(seq, monotonicMs());
      // Beats control never answered are not kept forever.
      if (this.beatsSent.size > 64) this.beatsSent.delete(this.beatsSent.keys().next().value!);
      const memory = this.storage.memory;
      const [memoryFreeMiB, memoryLentMiB] = await Promise.all([memory.hostFreeMiB(facts.memoryFreeMiB), memory.lentMiB()]);
      this.send({ type: 'heartbeat', seq, memoryFreeMiB, ...(memoryLentMiB > 0 ? { memoryLentMiB } : {}) });
      if (this.seq % (this.opts.fullReportEvery ?? 10) === 0) {
        this.send({ type: 'vms', full: true, vms: (await this.opts.driver.list()).map((vm) => this.report(vm)) });
        await this.reportPools();
      }
    } catch (err) {
      this.opts.log.warn({ err }, 'heartbeat failed');
    }
  }

  /** Free space changes with every guest write: reported on connect and with each full VM report. */
  private async reportPools(): Promise<void> {
    try {
      const [pools, memoryLentMiB] = await Promise.all([this.storage.report(this.sharedPools), this.storage.memory.lentMiB()]);
      this.send({ type: 'pools', pools, memoryLentMiB });
    } catch (err) {
      this.opts.log.warn({ err }, 'could not report the storage pools');
    }
  }

  private send(msg: AgentMessage): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  /** Stops talking to control; the driver and its VMs are the caller's to close. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    this.lease?.stop();
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.reconnect) clearTimeout(this.reconnect);
    for (const a of this.inflight.values()) a.abort();
    // Exports of storage this agent made end with it; storage handed in belongs to the caller.
    if (!this.opts.storage) await this.storage.close();
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        socket.once('close', () => resolve());
        socket.close();
        setTimeout(() => { socket.terminate(); resolve(); }, 1000).unref();
      });
    }
  }
}

const unique = (urls: string[]) => [...new Set(urls.map((u) => u.replace(/\/+$/, '')))];

