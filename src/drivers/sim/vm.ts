// One simulated VM: its record, how it reports itself, and the pending boot a start() waits on.
import { DriverError, type DriverVmSpec, type DriverVmState, type DriverVmStatus, type RemoteMemoryStatus } from '../types.ts';

/** A boot in progress; every start() of the same VM waits on the same one. */
export interface PendingBoot {
  promise: Promise<void>;
  resolve(): void;
  reject(err: DriverError): void;
  cancelTimer(): void;
}

export interface SimVm {
  spec: DriverVmSpec;
  state: DriverVmState;
  /** Memory the guest has now (balloon and virtio-mem applied); what the host has set aside for it. */
  actualMiB: number;
  /** What the simulated guest needs; the balloon never goes below this plus the margin. */
  usedMiB: number;
  startedAt?: number;
  reason?: string;
  console: string;
  boot?: PendingBoot;
  /** A memory change the guest has not reached yet. */
  resize?: PendingResize;
  migration?: { cancel(err: DriverError): void };
  /** Remote memory by slot: the simulated guest swaps to it as soon as it is attached. */
  remoteMemory?: Map<number, RemoteMemoryStatus>;
  /** How much of its remote memory the simulated guest has swapped out to (a test knob). */
  swapUsedMiB?: number;
}

/** States in which the VM holds host memory; an incoming VM holds it so the migration cannot be outbid. */
export function holdsMemory(state: DriverVmState): boolean {
  return state === 'starting' || state === 'running' || state === 'paused' || state === 'incoming';
}

export function isUp(state: DriverVmState): boolean {
  return state === 'running' || state === 'paused';
}

export function toStatus(vm: SimVm, nowMs: number): DriverVmStatus {
  const status: DriverVmStatus = {
    id: vm.spec.id,
    name: vm.spec.name,
    state: vm.state,
    cpus: vm.spec.cpus,
    memoryMiB: vm.spec.memoryMiB,
    memoryActualMiB: holdsMemory(vm.state) ? vm.actualMiB : 0,
  };
  // The balloon driver only reports once the guest kernel runs.
  if (isUp(vm.state)) status.memoryUsedMiB = vm.usedMiB;
  if (isUp(vm.state) && vm.startedAt !== undefined) status.uptimeS = Math.max(0, (nowMs - vm.startedAt) / 1000);
  if (vm.reason !== undefined) status.reason = vm.reason;
  // A simulated replica has nothing to copy: in step as soon as the VM runs.
  const replicas = vm.spec.disks.flatMap((d, disk) => (d.replica ? [{ disk, target: { ...d.replica }, state: 'synced' as const }] : []));
  if (isUp(vm.state) && replicas.length > 0) status.replicas = replicas;
  const remote = [...(vm.remoteMemory?.values() ?? [])].sort((a, b) => a.slot - b.slot);
  if (isUp(vm.state) && remote.length > 0) {
    status.remoteMemory = remote.map((r) => ({ ...r, target: { ...r.target } }));
    status.swapTotalMiB = remote.reduce((n, r) => n + r.sizeMiB, 0);
    status.swapUsedMiB = Math.min(vm.swapUsedMiB ?? 0, status.swapTotalMiB);
  }
  return status;
}

/** A promise with its settlers; it may fail after its only waiter gave up, which must not surface as an unhandled rejection. */
function pending(): { promise: Promise<void>; resolve(): void; reject(err: DriverError): void } {
  let resolve!: () => void;
  let reject!: (err: DriverError) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

export function createBoot(cancelTimer: () => void): PendingBoot {
  return { ...pending(), cancelTimer };
}

/** A memory change under way: the balloon moves at the guest's pace, and the caller waits for the end. */
export interface PendingResize {
  targetMiB: number;
  promise: Promise<void>;
  resolve(): void;
  reject(err: DriverError): void;
  cancelTimer(): void;
}

export function createResize(targetMiB: number, cancelTimer: () => void): PendingResize {
  return { targetMiB, ...pending(), cancelTimer };
}

/** Memory the host has set aside for a VM: a growing one holds its new size from the moment it asked. */
export function reservedMiB(vm: SimVm): number {
  return Math.max(vm.actualMiB, vm.resize?.targetMiB ?? 0);
}

/** Ends whatever the VM was doing in the background, failing the callers that wait on it. */
export function interrupt(vm: SimVm, why: string): void {
  // Plugged devices go with the guest; a new boot starts with none.
  vm.remoteMemory = undefined;
  vm.swapUsedMiB = undefined;
  if (vm.boot) {
    const boot = vm.boot;
    vm.boot = undefined;
    boot.cancelTimer();
    boot.reject(new DriverError('BOOT_FAILED', `${vm.spec.id}: ${why}`));
  }
  if (vm.resize) {
    const resize = vm.resize;
    vm.resize = undefined;
    resize.cancelTimer();
    resize.reject(new DriverError('VM_NOT_RUNNING', `${vm.spec.id}: ${why} before its memory reached ${resize.targetMiB} MiB`));
  }
  if (vm.migration) {
    const migration = vm.migration;
    vm.migration = undefined;
    migration.cancel(new DriverError('MIGRATION_FAILED', `${vm.spec.id}: ${why}`));
  }
}

export function checkSpec(spec: DriverVmSpec): void {
  const problems: string[] = [];
  if (!spec.id) problems.push('id is empty');
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1) problems.push('cpus must be a positive integer');
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 1) problems.push('memoryMiB must be a positive integer');
  if (!(spec.maxMemoryMiB >= spec.memoryMiB)) problems.push('maxMemoryMiB must be at least memoryMiB');
  if (problems.length > 0) throw new DriverError('BOOT_FAILED', `invalid VM spec ${spec.id}: ${problems.join(', ')}`);
}
