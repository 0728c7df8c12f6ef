// The in-memory hypervisor: a host with CPU and memory capacity whose VMs boot, balloon, crash and migrate on timers.
import { randomUUID } from 'node:crypto';
import {
  DriverError,
  type DiskSpec,
  type DriverEvent,
  type DriverVmSpec,
  type DriverVmState,
  type DriverVmStatus,
  type HostFacts,
  type HypervisorDriver,
  type MigrationProgress,
  type MigrationResult,
  type MigrationTarget,
  type RemoteMemoryTarget,
  type ReplicaTarget,
  type StopOptions,
} from '../types.ts';
import { checkRemoteMemory, sameRemoteTarget } from '../remote-memory.ts';
import { realClock, TimerSet, type SimClock } from './clock.ts';
import { appendHistory, bootedLines, earlyBootLines, echo, rebootLines, shutdownLines } from './console.ts';
import { migrationUri, runMigration, type MigrationContext } from './migration.ts';
import { checkSpec, createBoot, createResize, holdsMemory, interrupt, isUp, reservedMiB, toStatus, type SimVm } from './vm.ts';
import { DriverListeners } from '../listeners.ts';

export interface SimDriverOptions {
  hostname: string;
  /** Address in migration URIs; defaults to the hostname. Several drivers may share one. */
  address?: string;
  cpus?: number;
  memoryMiB?: number;
  /** How long a VM stays 'starting' before it runs. */
  bootDelayMs?: number;
  /** Link speed for live migration: a migration takes memory / this. */
  migrateMiBPerS?: number;
  clock?: SimClock;
  /** Decides per spec that the boot fails, with the returned reason. */
  failBoot?: (spec: DriverVmSpec) => string | undefined;
  /** What the guest uses once booted; a quarter of boot memory unless told otherwise. */
  guestUsedMiB?: (spec: DriverVmSpec) => number;
  /** Headroom above guest use that the balloon never takes away (a real guest would panic). */
  balloonMarginMiB?: number;
  /** How fast the guest gives memory back or takes more: a change of N MiB takes N / this seconds. */
  balloonMiBPerS?: number;
}

export interface SimDriver extends HypervisorDriver {
  readonly kind: 'sim';
  /** The next start() that actually boots a VM fails with BOOT_FAILED and this reason; undefined disarms it. */
  failNextStart(reason: string | undefined): void;
  /** The guest dies: state 'crashed', its memory is freed, waiting callers fail. */
  crash(vmId: string, reason?: string): void;
  /** Timers the driver still holds; 0 once close() returned. */
  readonly pendingTimers: number;
  /** Test knob: the guest has this much of its swap (remote memory) in use; the pages a dying donor takes along. */
  useSwap(vmId: string, usedMiB: number): void;
  /** Memory the host uses outside its VMs (its own processes, page cache): a knob for memory pressure. */
  setHostUsedMiB(mib: number): void;
}

const defaultGuestUsedMiB = (spec: DriverVmSpec): number => Math.max(16, Math.round(spec.memoryMiB / 4));

export function createSimDriver(opts: SimDriverOptions): SimDriver {
  return new SimHypervisor(opts);
}

class SimHypervisor implements SimDriver {
  readonly kind = 'sim' as const;
  private readonly vms = new Map<string, SimVm>();
  private readonly listeners = new DriverListeners();
  private readonly clock: SimClock;
  private readonly timers: TimerSet;
  private readonly address: string;
  private readonly cpus: number;
  private readonly memoryMiB: number;
  private readonly bootDelayMs: number;
  private readonly marginMiB: number;
  private readonly migration: MigrationContext;
  private nextStartFailure: string | undefined;
  private closed = false;
  private hostUsedMiB = 0;

  constructor(private readonly opts: SimDriverOptions) {
    this.clock = opts.clock ?? realClock;
    this.timers = new TimerSet(this.clock);
    this.address = opts.address ?? opts.hostname;
    this.cpus = opts.cpus ?? 8;
    this.memoryMiB = opts.memoryMiB ?? 16_384;
    this.bootDelayMs = opts.bootDelayMs ?? 200;
    this.marginMiB = opts.balloonMarginMiB ?? 32;
    this.migration = {
      address: this.address,
      instanceId: randomUUID(),
      hostname: opts.hostname,
      migrateMiBPerS: opts.migrateMiBPerS ?? 1024,
      clock: this.clock,
      timers: this.timers,
      departed: (vm) => {
        this.vms.delete(vm.spec.id);
        this.setState(vm, 'stopped', 'migrated to another host');
      },
    };
  }

  setHostUsedMiB(mib: number): void {
    this.hostUsedMiB = Math.max(0, mib);
  }

  useSwap(vmId: string, usedMiB: number): void {
    const vm = this.get(vmId);
    vm.swapUsedMiB = usedMiB;
    this.emitState(vm);
  }

  get pendingTimers(): number {
    return this.timers.size;
  }

  async facts(): Promise<HostFacts> {
    this.checkOpen();
    return {
      hostname: this.opts.hostname,
      cpus: this.cpus,
      memoryMiB: this.memoryMiB,
      memoryFreeMiB: this.freeMiB(),
      driver: 'sim',
      address: this.address,
      capabilities: ['balloon', 'virtio-mem', 'live-migration', 'console'],
      accelerator: 'sim',
    };
  }

  async list(): Promise<DriverVmStatus[]> {
    this.checkOpen();
    return [...this.vms.values()].map((vm) => this.status_(vm));
  }

  async status(vmId: string): Promise<DriverVmStatus> {
    return this.status_(this.get(vmId));
  }

  async start(spec: DriverVmSpec, signal?: AbortSignal): Promise<DriverVmStatus> {
    this.checkOpen();
    checkSpec(spec);
    if (signal?.aborted) throw new DriverError('BOOT_FAILED', `start of ${spec.id} cancelled`);
    const existing = this.vms.get(spec.id);
    if (existing && isUp(existing.state)) return this.status_(existing);
    if (existing?.state === 'starting') return this.waitForBoot(existing, signal);
    if (existing?.state === 'incoming') throw new DriverError('VM_EXISTS', `${spec.id} is arriving by migration`);

    const vm = this.admit(spec, 'starting', existing);
    const failure = this.nextStartFailure ?? this.opts.failBoot?.(spec);
    this.nextStartFailure = undefined;
    vm.boot = createBoot(this.timers.after(this.bootDelayMs, () => this.finishBoot(vm, failure)));
    this.setState(vm, 'starting');
    this.print(vm, earlyBootLines(spec));
    return this.waitForBoot(vm, signal);
  }

  async stop(vmId: string, opts: StopOptions = {}): Promise<void> {
    const vm = this.get(vmId);
    if (vm.state === 'stopped' || vm.state === 'crashed') return;
    if (vm.state === 'incoming') throw new DriverError('VM_NOT_RUNNING', `${vmId} has not arrived yet; abort the incoming migration`);
    interrupt(vm, 'stopped');
    if (isUp(vm.state)) this.print(vm, shutdownLines(opts.force ?? false));
    this.setState(vm, 'stopped');
  }

  async reboot(vmId: string): Promise<void> {
    const vm = this.get(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    // Like QEMU's system_reset: the guest starts over but the VM never leaves the running state.
    vm.startedAt = this.clock.now();
    this.print(vm, rebootLines() + earlyBootLines(vm.spec) + bootedLines(vm.spec));
  }

  async delete(vmId: string): Promise<void> {
    this.checkOpen();
    const vm = this.vms.get(vmId);
    if (!vm) return;
    interrupt(vm, 'deleted');
    this.vms.delete(vmId);
    if (vm.state !== 'stopped') this.setState(vm, 'stopped', 'deleted');
  }

  async setMemory(vmId: string, targetMiB: number): Promise<DriverVmStatus> {
    const vm = this.get(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    if (!Number.isFinite(targetMiB) || targetMiB > vm.spec.maxMemoryMiB) {
      throw new DriverError('UNSUPPORTED', `${vmId}: ${targetMiB} MiB is above its maxMemoryMiB ${vm.spec.maxMemoryMiB}`);
    }
    const floorMiB = vm.usedMiB + this.marginMiB;
    if (targetMiB < floorMiB) {
      throw new DriverError('INSUFFICIENT_MEMORY', `${vmId} uses ${vm.usedMiB} MiB; refusing to go below ${floorMiB} MiB`);
    }
    const growMiB = targetMiB - reservedMiB(vm);
    const freeMiB = this.freeMiB();
    if (growMiB > freeMiB) {
      throw new DriverError('INSUFFICIENT_MEMORY', `${vmId} would grow by ${growMiB} MiB, host has ${freeMiB} MiB free`);
    }
    // A newer request replaces one still under way, as a new balloon target does in QEMU.
    if (vm.resize) {
      const old = vm.resize;
      vm.resize = undefined;
      old.cancelTimer();
      old.reject(new DriverError('MEMORY_NOT_REACHED', `${vmId}: the change to ${old.targetMiB} MiB was replaced by one to ${targetMiB} MiB`));
    }
    if (targetMiB === vm.actualMiB) return this.status_(vm);
    const takesMs = (Math.abs(targetMiB - vm.actualMiB) / (this.opts.balloonMiBPerS ?? 2048)) * 1000;
    const resize = createResize(targetMiB, this.timers.after(takesMs, () => {
      if (vm.resize !== resize) return;
      vm.resize = undefined;
      vm.actualMiB = targetMiB;
      this.emitState(vm);
      resize.resolve();
    }));
    vm.resize = resize;
    await resize.promise;
    return this.status_(vm);
  }

  /** Takes a VM in when the host has room for its memory; its console history survives an earlier copy. */
  private admit(spec: DriverVmSpec, state: 'starting' | 'incoming', existing: SimVm | undefined): SimVm {
    const freeMiB = this.freeMiB();
    if (spec.memoryMiB > freeMiB) {
      throw new DriverError('INSUFFICIENT_MEMORY', `${spec.id} needs ${spec.memoryMiB} MiB, host has ${freeMiB} MiB free`);
    }
    const vm: SimVm = {
      spec,
      state,
      actualMiB: spec.memoryMiB,
      usedMiB: (this.opts.guestUsedMiB ?? defaultGuestUsedMiB)(spec),
      console: existing?.console ?? '',
    };
    this.vms.set(spec.id, vm);
    return vm;
  }

  async prepareIncoming(spec: DriverVmSpec): Promise<MigrationTarget> {
    this.checkOpen();
    checkSpec(spec);
    const existing = this.vms.get(spec.id);
    const viaReplica = spec.disks.some((d) => d.replicaHere) ? { viaReplica: true } : {};
    if (existing?.state === 'incoming') return { uri: migrationUri(this.migration, spec.id), ...viaReplica };
    if (existing && holdsMemory(existing.state)) throw new DriverError('VM_EXISTS', `${spec.id} already runs here`);
    const vm = this.admit(spec, 'incoming', existing);
    this.setState(vm, 'incoming');
    return { uri: migrationUri(this.migration, spec.id), ...viaReplica };
  }

  async migrate(
    vmId: string,
    target: MigrationTarget,
    onProgress?: (p: MigrationProgress) => void,
    signal?: AbortSignal,
  ): Promise<MigrationResult> {
    const vm = this.get(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    return runMigration(this.migration, vm, target, onProgress, signal);
  }

  async completeIncoming(vmId: string, _timeoutMs?: number, release?: (disks: DiskSpec[]) => Promise<void>): Promise<DriverVmStatus> {
    // Sim hosts cannot see each other, so the control plane's word that the source finished is taken as arrival.
    const vm = this.get(vmId);
    if (isUp(vm.state)) return this.status_(vm);
    if (vm.state !== 'incoming') throw new DriverError('MIGRATION_FAILED', `${vmId} is ${vm.state}, not incoming`);
    const copies = vm.spec.disks.filter((d) => d.replicaHere);
    if (copies.length > 0) {
      await release?.(copies);
      vm.spec = { ...vm.spec, disks: vm.spec.disks.map(({ replicaHere: _taken, ...d }) => d) };
    }
    vm.startedAt = this.clock.now();
    this.setState(vm, 'running');
    this.print(vm, `\r\n[migrated in from another host]\r\n${vm.spec.name} login: `);
    return this.status_(vm);
  }

  async abortIncoming(vmId: string): Promise<void> {
    this.checkOpen();
    const vm = this.vms.get(vmId);
    if (!vm) return;
    if (vm.state !== 'incoming') throw new DriverError('VM_EXISTS', `${vmId} is ${vm.state}, not an incoming migration`);
    this.vms.delete(vmId);
    this.setState(vm, 'stopped', 'incoming migration aborted');
  }

  subscribe(listener: (event: DriverEvent) => void): () => void {
    return this.listeners.add(listener);
  }

  async consoleWrite(vmId: string, data: string): Promise<void> {
    const vm = this.get(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    this.print(vm, echo(data));
  }

  async consoleHistory(vmId: string): Promise<string> {
    return this.get(vmId).console;
  }

  async attachReplica(vmId: string, disk: number, target: ReplicaTarget): Promise<DriverVmStatus> {
    return this.setReplica(vmId, disk, target);
  }

  async detachReplica(vmId: string, disk: number): Promise<DriverVmStatus> {
    return this.setReplica(vmId, disk, undefined);
  }

  private setReplica(vmId: string, index: number, target: ReplicaTarget | undefined): DriverVmStatus {
    const vm = this.get(vmId);
    if (target && !isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    if (!vm.spec.disks[index]) throw new DriverError('IMAGE_INVALID', `${vmId} has no disk ${index}`);
    vm.spec = {
      ...vm.spec,
      disks: vm.spec.disks.map((d, i) => {
        if (i !== index) return d;
        const { replica: _old, ...rest } = d;
        return target ? { ...rest, replica: { ...target } } : rest;
      }),
    };
    const status = this.status_(vm);
    this.emit({ type: 'vm-state', vm: status });
    return status;
  }

  async attachRemoteMemory(vmId: string, slot: number, target: RemoteMemoryTarget, sizeMiB: number): Promise<DriverVmStatus> {
    checkRemoteMemory(slot, target, sizeMiB);
    const vm = this.get(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    vm.remoteMemory ??= new Map();
    const now = vm.remoteMemory.get(slot);
    if (!now || !sameRemoteTarget(now.target, target) || now.sizeMiB !== sizeMiB || now.state !== 'active') {
      vm.remoteMemory.set(slot, { slot, target: { ...target }, sizeMiB, state: 'active' });
      this.emit({ type: 'vm-state', vm: this.status_(vm) });
    }
    return this.status_(vm);
  }

  async detachRemoteMemory(vmId: string, slot: number): Promise<DriverVmStatus | undefined> {
    checkRemoteMemory(slot);
    const vm = this.vms.get(vmId);
    if (!vm) return undefined;
    if (vm.remoteMemory?.delete(slot)) this.emit({ type: 'vm-state', vm: this.status_(vm) });
    return this.status_(vm);
  }

  async growDisk(vmId: string, index: number, sizeMiB: number): Promise<void> {
    const vm = this.get(vmId);
    if (isUp(vm.state)) throw new DriverError('VM_EXISTS', `${vmId} is ${vm.state}; stop it to resize its disk`);
    const disk = vm.spec.disks[index];
    if (!disk) throw new DriverError('IMAGE_INVALID', `${vmId} has no disk ${index}`);
    if ((disk.sizeMiB ?? 0) > sizeMiB) throw new DriverError('IMAGE_INVALID', `${vmId} disk ${index} is ${disk.sizeMiB} MiB; shrinking loses data`);
    // The simulated disk is only its size in the spec.
    vm.spec = { ...vm.spec, disks: vm.spec.disks.map((d, i) => (i === index ? { ...d, sizeMiB } : d)) };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const vm of this.vms.values()) interrupt(vm, 'driver closed');
    this.timers.cancelAll();
    this.listeners.clear();
  }

  failNextStart(reason: string | undefined): void {
    this.nextStartFailure = reason;
  }

  crash(vmId: string, reason = 'guest crashed'): void {
    const vm = this.get(vmId);
    if (!holdsMemory(vm.state) || vm.state === 'incoming') throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    interrupt(vm, reason);
    this.print(vm, `\r\nKernel panic - not syncing: ${reason}\r\n`);
    this.setState(vm, 'crashed', reason);
  }

  private finishBoot(vm: SimVm, failure: string | undefined): void {
    const boot = vm.boot;
    vm.boot = undefined;
    if (failure !== undefined) {
      this.print(vm, `Kernel panic - not syncing: ${failure}\r\n`);
      this.setState(vm, 'stopped', failure);
      boot?.reject(new DriverError('BOOT_FAILED', `${vm.spec.id}: ${failure}`));
      return;
    }
    vm.startedAt = this.clock.now();
    this.setState(vm, 'running');
    this.print(vm, bootedLines(vm.spec));
    boot?.resolve();
  }

  private async waitForBoot(vm: SimVm, signal?: AbortSignal): Promise<DriverVmStatus> {
    const boot = vm.boot;
    if (!boot) return this.status_(vm);
    // Aborting a start means the caller no longer wants the VM up: the boot stops for every waiter.
    const onAbort = (): void => {
      if (vm.boot !== boot) return;
      interrupt(vm, 'start cancelled');
      this.setState(vm, 'stopped', 'start cancelled');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await boot.promise;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return this.status_(vm);
  }

  private freeMiB(): number {
    let usedMiB = 0;
    for (const vm of this.vms.values()) if (holdsMemory(vm.state)) usedMiB += reservedMiB(vm);
    return Math.max(0, this.memoryMiB - usedMiB - this.hostUsedMiB);
  }

  private get(vmId: string): SimVm {
    this.checkOpen();
    const vm = this.vms.get(vmId);
    if (!vm) throw new DriverError('VM_NOT_FOUND', `no VM ${vmId} on ${this.opts.hostname}`);
    return vm;
  }

  private checkOpen(): void {
    if (this.closed) throw new DriverError('INTERNAL', `sim driver of ${this.opts.hostname} is closed`);
  }

  private status_(vm: SimVm): DriverVmStatus {
    return toStatus(vm, this.clock.now());
  }

  private setState(vm: SimVm, state: DriverVmState, reason?: string): void {
    vm.state = state;
    vm.reason = reason;
    if (!isUp(state) && state !== 'starting') vm.startedAt = undefined;
    this.emitState(vm);
  }

  private emitState(vm: SimVm): void {
    this.emit({ type: 'vm-state', vm: this.status_(vm) });
  }

  private print(vm: SimVm, data: string): void {
    if (data === '') return;
    vm.console = appendHistory(vm.console, data);
    this.emit({ type: 'console', vmId: vm.spec.id, data });
  }

  private emit(event: DriverEvent): void {
    this.listeners.emit(event);
  }
}
