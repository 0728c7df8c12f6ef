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
  /**
   * Incoming migration only: this host serves the disk's synchronous copy (a local disk's replica), which
   * becomes the disk as the VM arrives; nothing of it is sent, and it is never deleted as a stale copy.
   */
  replicaHere?: boolean;
  /** Bypass the host's page cache (O_DIRECT): the disk is as fast as its device, not as the host's spare RAM. */
  direct?: boolean;
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

/** Where a donor host serves lent memory: an NBD export (what `memoryExport` answers). */
export type RemoteMemoryTarget = ReplicaTarget;

/**
 * `attaching`: plugged or being plugged, not yet swap in the guest; `active`: the guest swaps to it;
 * `detaching`: being taken back (guest swapoff, then unplug); `failed`: nothing is plugged, `reason` says why.
 */
export type RemoteMemoryState = 'attaching' | 'active' | 'detaching' | 'failed';

/** One remote-memory slot of a VM: a neighbour's RAM, hot-plugged as a disk the guest swaps to. */
export interface RemoteMemoryStatus {
  slot: number;
  target: RemoteMemoryTarget;
  sizeMiB: number;
  state: RemoteMemoryState;
  reason?: string;
}

/** Slots a VM has for remote memory: 0..REMOTE_MEMORY_SLOTS-1. */
export const REMOTE_MEMORY_SLOTS = 8;

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
  /** The VM's remote-memory slots in use, while it runs. */
  remoteMemory?: RemoteMemoryStatus[];
  /** The guest's swap (all of it: remote memory and local disks), when the driver can ask the guest. */
  swapTotalMiB?: number;
  swapUsedMiB?: number;
  /** Page faults the guest served from swap or disk since it booted (balloon statistics). */
  majorFaults?: number;
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

export type DriverCapability = 'balloon' | 'virtio-mem' | 'live-migration' | 'console' | 'nbd-export' | 'replicas';

/** Where an incoming migration listens; opaque to control. */
export interface MigrationTarget {
  uri: string;
  /** host:port of the destination's NBD server that receives local disks. */
  nbd?: string;
  /**
   * The destination holds the copy of each replicated disk and takes it over: the source keeps mirroring
   * into it until it is paused, sends no disk, and the destination runs once that copy's server let go.
   */
  viaReplica?: boolean;
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
      | 'REMOTE_MEMORY_FAILED'
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
  /**
   * Destination side: wait for the received VM to run. A VM that takes over disk copies served on this host
   * (`replicaHere`) waits paused until `release` has stopped their servers (which hold their write locks).
   */
  completeIncoming(vmId: string, timeoutMs?: number, release?: (disks: DiskSpec[]) => Promise<void>): Promise<DriverVmStatus>;
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
  /**
   * Hot-plugs the donor's export `target` into slot `slot` (0..7) of a running VM and has the guest swap to
   * it; resolves once the guest does. On failure nothing stays plugged. The same target again is a no-op.
   */
  attachRemoteMemory(vmId: string, slot: number, target: RemoteMemoryTarget, sizeMiB: number): Promise<DriverVmStatus>;
  /**
   * Takes slot `slot` back: the guest stops swapping to it (its pages come back into RAM), then it is
   * unplugged. A free slot, or a VM that is gone (undefined then), is fine.
   */
  detachRemoteMemory(vmId: string, slot: number): Promise<DriverVmStatus | undefined>;
  /** Grows disk `index` of a VM that is not running (its next boot sees the new size). */
  growDisk(vmId: string, index: number, sizeMiB: number): Promise<void>;
  /** Releases sockets and timers; running VMs keep running (a later driver re-attaches). */
  close(): Promise<void>;
  /**
   * Where the process of a VM writes its pid, for drivers whose VMs are processes of their own (QEMU): the
   * host's watchdog kills it there when the host's lease runs out, even when the agent cannot.
   */
  pidFile?(vmId: string): string;
}
