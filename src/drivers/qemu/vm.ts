// One QEMU-backed VM as the driver sees it: its persisted record, its QMP and console links, and how it ended.
import { readFile, writeFile, rename } from 'node:fs/promises';
import type { DriverVmSpec, DriverVmState, DriverVmStatus, RemoteMemoryStatus, ReplicaStatus } from '../types.ts';
import { BALLOON_PATH, type Accel } from './args.ts';
import { SerialConsole } from './console.ts';
import { GuestAgent } from './guest-agent.ts';
import { memorySnapshot } from './memory.ts';
import { guestSwap } from './remote-memory.ts';
import type { VmPaths } from './paths.ts';
import { isQemuAlive, lastLines, waitGone, type Launched } from './process.ts';
import type { QmpClient } from './qmp.ts';

/** `incoming` until a migration into this host completes; then `run`. */
export type VmMode = 'run' | 'incoming';

/** What spec.json holds: enough for a new driver instance to recognise and re-attach to the VM. */
export interface VmRecord {
  spec: DriverVmSpec;
  accel: Accel;
  mode: VmMode;
  /** The listening URI of an incoming VM. */
  incomingUri?: string;
  /** Remote memory plugged into this QEMU, by slot: a later driver reports (and detaches) it too. */
  remoteMemory?: RemoteMemoryStatus[];
}

export function parseRecord(raw: unknown): VmRecord | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  const spec = r.spec as Record<string, unknown> | undefined;
  if (!spec || typeof spec.id !== 'string' || typeof spec.memoryMiB !== 'number' || typeof spec.cpus !== 'number') return undefined;
  if (r.accel !== 'kvm' && r.accel !== 'tcg') return undefined;
  if (r.mode !== 'run' && r.mode !== 'incoming') return undefined;
  const record: VmRecord = { spec: r.spec as DriverVmSpec, accel: r.accel, mode: r.mode };
  if (typeof r.incomingUri === 'string') record.incomingUri = r.incomingUri;
  if (Array.isArray(r.remoteMemory)) record.remoteMemory = r.remoteMemory as RemoteMemoryStatus[];
  return record;
}

export async function readRecord(path: string): Promise<VmRecord | undefined> {
  try {
    return parseRecord(JSON.parse(await readFile(path, 'utf8')));
  } catch {
    return undefined;
  }
}

export interface VmHooks {
  stateChanged(vm: QemuVm): void;
  consoleOutput(vm: QemuVm, text: string): void;
}

const PANIC = /Kernel panic - not syncing:[^\r\n]*/;

export class QemuVm {
  state: DriverVmState = 'stopped';
  reason: string | undefined;
  pid: number | undefined;
  qmp: QmpClient | undefined;
  bootedAtMs: number | undefined;
  /** While set, the pause at switchover is part of the migration, not a state the VM is in. */
  migrating = false;
  /** The replica states last read from QEMU (replicas.ts), for status and state events. */
  replicas: ReplicaStatus[] | undefined;
  /** Why mirroring a disk into its replica could not start, by disk index. */
  readonly replicaFailures = new Map<number, string>();
  /** The qemu-guest-agent in the guest (remote memory's swapon and swapoff). */
  readonly guestAgent: GuestAgent;
  /** Set before the driver makes QEMU exit on purpose: the exit is then a stop, not a crash. */
  expectedExit: { reason?: string } | undefined;
  private console: SerialConsole | undefined;
  private shutdownReason: string | undefined;
  private exitWaiters: Array<() => void> = [];
  private panicTail = '';
  /** The memory last measured, for state events that must not wait on QMP. */
  private lastActualMiB: number | undefined;

  constructor(
    public record: VmRecord,
    readonly paths: VmPaths,
    private readonly hooks: VmHooks,
  ) {
    this.guestAgent = new GuestAgent(paths.guestAgent);
  }

  get id(): string {
    return this.record.spec.id;
  }

  get spec(): DriverVmSpec {
    return this.record.spec;
  }

  get alive(): boolean {
    return this.pid !== undefined && isQemuAlive(this.pid, this.paths.dir);
  }

  async saveRecord(): Promise<void> {
    const tmp = `${this.paths.spec}.tmp`;
    await writeFile(tmp, `${JSON.stringify(this.record, null, 2)}\n`);
    await rename(tmp, this.paths.spec);
  }

  setState(state: DriverVmState, reason?: string): void {
    if (this.state === state && this.reason === reason) return;
    this.state = state;
    this.reason = reason;
    this.hooks.stateChanged(this);
  }

  /** Takes over a QEMU that answers QMP: events, console, exit watching. */
  attach(qmp: QmpClient, pid: number, launched?: Launched): void {
    this.qmp = qmp;
    this.pid = pid;
    this.shutdownReason = undefined;
    this.expectedExit = undefined;
    qmp.on('SHUTDOWN', (e) => {
      this.shutdownReason = typeof e.data.reason === 'string' ? e.data.reason : 'unknown';
    });
    qmp.on('STOP', () => {
      if (this.state === 'running' && !this.migrating) this.setState('paused');
    });
    qmp.on('RESUME', () => {
      if (this.state === 'incoming') void this.arrived();
      else if (this.state === 'paused' || this.state === 'crashed') this.setState('running');
    });
    qmp.on('RESET', () => {
      this.bootedAtMs = Date.now();
    });
    qmp.on('GUEST_PANICKED', () => this.setState('crashed', 'guest kernel panicked'));
    const files = { socket: this.paths.serialSocket, qemuLog: this.paths.serialLog, history: this.paths.consoleLog, offset: this.paths.consoleOffset };
    this.console = new SerialConsole(files, (text) => this.onConsole(text));
    qmp.onClose(() => void this.onQmpClosed(launched));
  }

  /** An incoming migration completed (QEMU resumed the guest): from now on this is the VM. */
  async arrived(): Promise<void> {
    if (this.state !== 'incoming') return;
    // A disk copy taken over is this VM's own disk from now on (deleted with it, like any local disk).
    const disks = this.spec.disks.map(({ replicaHere: _taken, ...d }) => d);
    this.record = { spec: { ...this.spec, disks }, accel: this.record.accel, mode: 'run' };
    this.bootedAtMs = Date.now();
    this.setState('running');
    await this.saveRecord().catch(() => undefined);
    await this.enableStats();
  }

  /** Balloon statistics need polling switched on in QEMU; the guest then reports every interval. */
  async enableStats(): Promise<void> {
    await this.qmp
      ?.call('qom-set', { path: BALLOON_PATH, property: 'guest-stats-polling-interval', value: 1 })
      .catch(() => undefined);
  }

  consoleWrite(data: string): Promise<void> {
    if (!this.console) return Promise.reject(new Error('no console'));
    return this.console.write(data);
  }

  /** Resolves true once QEMU is gone and its exit was accounted for; false at the deadline. */
  waitExit(timeoutMs: number): Promise<boolean> {
    if (!this.qmp) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.exitWaiters = this.exitWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.exitWaiters.push(done);
    });
  }

  /** The status without asking QEMU: memory as last measured. State events use it so they keep their order. */
  snapshot(): DriverVmStatus {
    const spec = this.spec;
    const up = this.state === 'running' || this.state === 'paused';
    const status: DriverVmStatus = {
      id: spec.id,
      name: spec.name,
      state: this.state,
      cpus: spec.cpus,
      memoryMiB: spec.memoryMiB,
      memoryActualMiB: up ? (this.lastActualMiB ?? spec.memoryMiB) : this.state === 'incoming' || this.state === 'starting' ? spec.memoryMiB : 0,
    };
    if (up && this.bootedAtMs !== undefined) status.uptimeS = Math.max(0, (Date.now() - this.bootedAtMs) / 1000);
    if (this.reason !== undefined) status.reason = this.reason;
    if (up && this.replicas?.length) status.replicas = this.replicas.map((r) => ({ ...r, target: { ...r.target } }));
    const remote = this.record.remoteMemory;
    if (up && remote?.length) status.remoteMemory = remote.map((r) => ({ ...r, target: { ...r.target } }));
    return status;
  }

  async status(): Promise<DriverVmStatus> {
    const qmp = this.qmp;
    if ((this.state === 'running' || this.state === 'paused') && qmp) {
      // The guest's swap is asked only of guests with remote memory: a guest-exec costs the guest a process.
      const [mem, swap] = await Promise.all([
        memorySnapshot(qmp, this.spec).catch(() => undefined),
        this.record.remoteMemory?.length ? guestSwap(this.guestAgent, 2000) : undefined,
      ]);
      if (mem) this.lastActualMiB = mem.actualMiB;
      const status = this.snapshot();
      if (mem?.guest) status.memoryUsedMiB = mem.guest.usedMiB;
      if (mem?.guest?.majorFaults !== undefined) status.majorFaults = mem.guest.majorFaults;
      if (swap) Object.assign(status, swap);
      return status;
    }
    return this.snapshot();
  }

  /** Drops sockets and listeners; QEMU keeps running (driver close). */
  detach(): void {
    this.console?.close();
    this.console = undefined;
    const qmp = this.qmp;
    this.qmp = undefined;
    qmp?.close();
  }

  private onConsole(text: string): void {
    this.hooks.consoleOutput(this, text);
    // Keep a little of the previous chunk: the panic line may arrive split.
    const window = this.panicTail + text;
    this.panicTail = window.slice(-200);
    const panic = PANIC.exec(window);
    if (panic && (this.state === 'running' || this.state === 'starting')) this.setState('crashed', panic[0].trim());
  }

  private async onQmpClosed(launched?: Launched): Promise<void> {
    const qmp = this.qmp;
    if (!qmp) return; // detached on purpose
    const pid = this.pid;
    // QMP closes a moment before the process is gone; an exit we did not ask for is a crash.
    if (pid !== undefined) await waitGone(pid, this.paths.dir, 10_000);
    const exit = launched ? await Promise.race([launched.exited, new Promise<undefined>((r) => setTimeout(r, 1000, undefined))]) : undefined;
    this.console?.close();
    this.console = undefined;
    this.qmp = undefined;
    this.pid = undefined;
    this.bootedAtMs = undefined;
    this.lastActualMiB = undefined;
    this.replicas = undefined;
    this.replicaFailures.clear();
    if (this.expectedExit) {
      this.setState('stopped', this.expectedExit.reason);
    } else if (this.record.mode === 'incoming') {
      this.setState('stopped', `incoming migration failed${await this.why(exit)}`);
    } else if (this.shutdownReason === 'guest-shutdown') {
      this.setState('stopped', 'guest powered off');
    } else if (this.shutdownReason === 'host-qmp-quit') {
      this.setState('stopped', 'QEMU was told to quit over QMP');
    } else {
      const how = this.shutdownReason ? ` after shutdown (${this.shutdownReason})` : ' unexpectedly';
      this.setState('crashed', `QEMU exited${how}${await this.why(exit)}`);
    }
    const waiters = this.exitWaiters;
    this.exitWaiters = [];
    for (const w of waiters) w();
  }

  private async why(exit: { code: number | null; signal: NodeJS.Signals | null } | undefined): Promise<string> {
    const parts: string[] = [];
    if (exit?.signal) parts.push(`signal ${exit.signal}`);
    else if (exit && exit.code !== null) parts.push(`exit code ${exit.code}`);
    const log = (await lastLines(this.paths.qemuLog, 2)).replace(/\s+/g, ' ').trim();
    if (log) parts.push(log);
    return parts.length ? `: ${parts.join('; ')}` : '';
  }
}
