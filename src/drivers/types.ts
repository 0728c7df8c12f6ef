// The contract between Node Control and whatever runs VMs on a host: real QEMU or the in-memory simulator.

/** How the VM boots: from its first disk, or from a kernel and initrd (the test guest). */
export type BootSource =
  | { kind: 'disk' }
  /** `readyText`: console output that proves the guest is up; start() waits for it. */
  | { kind: 'kernel'; kernelPath: string; initrdPath: string; cmdline?: string; readyText?: string }
  | { kind: 'none' };

/**
 * A VM disk. When `path` does not exist yet the driver creates it: a qcow2 overlay on `backingPath`
 * when given, else an empty disk of `sizeMiB`. Paths on a shared pool are seen alike by every host.
 */
export interface DiskSpec {
  /** With `local`, relative to the host's own pool; the disk is then copied along on migration. */
  path: string;
  local?: boolean;
  format: 'qcow2' | 'raw';
  backingPath?: string;
  backingFormat?: 'qcow2' | 'raw';
  sizeMiB?: number;
  /** A synchronous copy on another host: every write reaches this NBD export too (see ReplicaTarget). */
  replica?: ReplicaTarget;
}

/** Where a disk's synchronous replica is served: an NBD export on the replica host (its `replicaExport`). */
export interface ReplicaTarget {
  host: string;
  port: number;
  exportName: string;
}

/**
 * `rebuilding`: the copy is being brought in step; `synced`: every write completes on both copies;
 * `degraded`: the copy stopped (the replica host or its export went away); the VM runs on its own disk.
 */
export type ReplicaState = 'rebuilding' | 'synced' | 'degraded';

export interface ReplicaStatus {
  /** Index of the disk in the spec. */
  disk: number;
  target: ReplicaTarget;
  state: ReplicaState;
  /** Bytes copied of the disk so far while rebuilding. */
  copiedBytes?: number;
  totalBytes?: number;
  /** Why it is degraded. */
  reason?: string;
}

export interface NicSpec {
  /** `user` is QEMU's user-mode network; `bridge` attaches a tap to the named Linux bridge. */
  mode: 'user' | 'bridge';
  bridge?: string;
  mac: string;
}

export interface DriverVmSpec {
  id: string;
  name: string;
  cpus: number;
  memoryMiB: number;
  /** Above memoryMiB the VM gets hot-pluggable memory (virtio-mem) up to this size. */
  maxMemoryMiB: number;
  boot: BootSource;
  disks: DiskSpec[];
  nics: NicSpec[];
}

/** What the guest looks like from the host right now. */
export type DriverVmState = 'starting' | 'running' | 'paused' | 'stopped' | 'crashed' | 'incoming';

export interface DriverVmStatus {
  id: string;
  name: string;
  state: DriverVmState;
  cpus: number;
  /** Memory assigned at boot. */
  memoryMiB: number;
  /** Memory the guest has now: boot memory after the balloon, plus plugged virtio-mem. */
  memoryActualMiB: number;
  /** Memory the guest itself says it uses, when the balloon driver reports it. */
  memoryUsedMiB?: number;
  /** Seconds since the guest started, from the driver's point of view. */
  uptimeS?: number;
  /** Why the VM is crashed or stopped, when the driver knows. */
  reason?: string;
  /** One entry per disk with a replica target, while the VM runs. */
  replicas?: ReplicaStatus[];
  /** Remote memory devices plugged in (memory leases), the guest's swap and its major page faults. */
  remoteMemory?: RemoteMemoryStatus[];
  swapTotalMiB?: number;
  swapUsedMiB?: number;
  majorFaults?: number;
}

/** A donor's RAM served over NBD: same address shape as a replica's. */
export type MemoryTarget = ReplicaTarget;

export interface RemoteMemoryStatus {
  slot: number;
  target: MemoryTarget;
  sizeMiB: number;
  state: 'attaching' | 'active' | 'detaching' | 'failed';
  reason?: string;
}

/**
 * Remote memory, optional in a driver: the donor side serves RAM over NBD, the borrower side plugs it into
 * a VM as swap. A driver without it refuses the commands with UNSUPPORTED (agent/remote-memory.ts).
 */
export interface RemoteMemoryDriver {
  exportMemory(name: string, sizeMiB: number): Promise<{ target: MemoryTarget; sizeMiB: number }>;
  unexportMemory(name: string): Promise<void>;
  attachRemoteMemory(vmId: string, slot: number, target: MemoryTarget, sizeMiB: number): Promise<DriverVmStatus>;
  detachRemoteMemory(vmId: string, slot: number): Promise<DriverVmStatus>;
  /** RAM served to others now. */
  memoryLentMiB(): number;
}

export interface HostFacts {
  hostname: string;
  cpus: number;
  memoryMiB: number;
  memoryFreeMiB: number;
  driver: 'sim' | 'qemu';
  /** Address other hosts use to reach this one (migration, NBD). */
  address: string;
  capabilities: DriverCapability[];
  accelerator?: 'kvm' | 'tcg' | 'sim';
}

export type DriverCapability = 'balloon' | 'virtio-mem' | 'live-migration' | 'console' | 'nbd-export' | 'replicas' | 'remote-memory';

/** Where an incoming migration listens; opaque to control. */
export interface MigrationTarget {
  uri: string;
  /** host:port of the destination's NBD server that receives local disks. */
  nbd?: string;
}

export interface MigrationProgress {
  /** 0..1 */
  fraction: number;
  transferredMiB: number;
  remainingMiB: number;
}

/** How a host's VMs leave it: `live`, `paused` for the whole copy, or `auto` (the driver picks the safe one). */
export type MigrationMode = 'auto' | 'live' | 'paused';

export interface MigrationResult {
  /** `live`: copied while the guest ran, paused only at the handover. `paused`: paused for the whole copy. */
  mode: 'live' | 'paused';
  totalMs: number;
  /** How long the guest could not run. */
  downtimeMs: number;
}

export type DriverEvent =
  | { type: 'vm-state'; vm: DriverVmStatus }
  | { type: 'console'; vmId: string; data: string }
  /** What facts() returns has changed (the accelerator, after a new probe). */
  | { type: 'facts-changed' };

export interface StopOptions {
  /** Skip the graceful ACPI powerdown and stop at once. */
  force?: boolean;
  /** How long to wait for a graceful stop before forcing it. */
  timeoutMs?: number;
}

/** Errors a driver throws carry a stable code that control turns into a task failure reason. */
export class DriverError extends Error {
  constructor(
    readonly code:
      | 'VM_NOT_FOUND'
      | 'VM_EXISTS'
      | 'VM_NOT_RUNNING'
      | 'INSUFFICIENT_MEMORY'
      | 'MEMORY_NOT_REACHED'
      | 'BOOT_FAILED'
      | 'IMAGE_INVALID'
      | 'MIGRATION_FAILED'
      | 'REPLICA_FAILED'
      | 'UNSUPPORTED'
      | 'INTERNAL',
    message: string,
  ) {
    super(message);
    this.name = 'DriverError';
  }
}

export interface HypervisorDriver {
  readonly kind: 'sim' | 'qemu';
  facts(): Promise<HostFacts>;
  /** Every VM the driver knows on this host, including ones it found after a restart. */
  list(): Promise<DriverVmStatus[]>;
  status(vmId: string): Promise<DriverVmStatus>;
  /** Defines and boots a VM; resolves once the guest is running. Starting a running VM is a no-op. */
  start(spec: DriverVmSpec, signal?: AbortSignal): Promise<DriverVmStatus>;
  /** Stopping a stopped VM is a no-op. */
  stop(vmId: string, opts?: StopOptions): Promise<void>;
  reboot(vmId: string): Promise<void>;
  /** Stops the VM if needed and forgets it, with every file it owned on this host but its disks. */
  delete(vmId: string): Promise<void>;
  /** Moves the balloon (and virtio-mem when above boot memory) so the guest has `targetMiB`. */
  setMemory(vmId: string, targetMiB: number): Promise<DriverVmStatus>;
  /** Destination side: get ready to receive `spec`. */
  prepareIncoming(spec: DriverVmSpec): Promise<MigrationTarget>;
  /** Source side: send the VM; on success it no longer runs here. On failure it keeps running here. */
  migrate(
    vmId: string,
    target: MigrationTarget,
    onProgress?: (p: MigrationProgress) => void,
    signal?: AbortSignal,
  ): Promise<MigrationResult>;
  /** Destination side: wait for the received VM to run. */
  completeIncoming(vmId: string, timeoutMs?: number): Promise<DriverVmStatus>;
  /** Destination side: drop a prepared incoming VM that will not arrive. */
  abortIncoming(vmId: string): Promise<void>;
  subscribe(listener: (event: DriverEvent) => void): () => void;
  /** Sends keystrokes to the serial console (drivers without a console throw UNSUPPORTED). */
  consoleWrite(vmId: string, data: string): Promise<void>;
  /** The console output so far (the last bytes the driver keeps). */
  consoleHistory(vmId: string): Promise<string>;
  /**
   * Mirrors disk `disk` of a running VM into `target` from now on (a rebuild after degradation, or a new
   * replica host); a replica it had is dropped first. The same target again while it mirrors is a no-op.
   */
  attachReplica(vmId: string, disk: number, target: ReplicaTarget): Promise<DriverVmStatus>;
  /** Ends the mirror of disk `disk` cleanly and forgets its target. */
  detachReplica(vmId: string, disk: number): Promise<DriverVmStatus>;
  /** Grows disk `index` of a VM that is not running (its next boot sees the new size). */
  growDisk(vmId: string, index: number, sizeMiB: number): Promise<void>;
  /** Releases sockets and timers; running VMs keep running (a later driver re-attaches). */
  close(): Promise<void>;
  /**
   * Where the process of a VM writes its pid, for drivers whose VMs are processes of their own (QEMU): the
   * host's watchdog kills it there when the host's lease runs out, even when the agent cannot.
   */
  pidFile?(vmId: string): string;
  /** Remote memory (memory leases), when the driver has it. */
  remoteMemory?: RemoteMemoryDriver;
}
