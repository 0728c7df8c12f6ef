// The QEMU HypervisorDriver: one detached qemu-system-x86_64 per VM, steered over QMP, found again after restarts.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { cpus as hostCpus, hostname as osHostname, totalmem } from 'node:os';
import {
  DriverError,
  type DiskSpec,
  type DriverEvent,
  type DriverVmSpec,
  type DriverVmStatus,
  type HostFacts,
  type HypervisorDriver,
  type MigrationMode,
  type MigrationProgress,
  type MigrationResult,
  type MigrationTarget,
  type RemoteMemoryTarget,
  type ReplicaTarget,
  type StopOptions,
} from '../types.ts';
import { checkRemoteMemory } from '../remote-memory.ts';
import { type RemoteMemoryOptions, attachRemoteMemory, detachRemoteMemory, settleInterrupted } from './remote-memory-slots.ts';
import { type AccelChoice, type AccelLog, type AccelOptions, chooseAccel, currentAccel, reprobeAccel, type ProbeGuest } from './accel.ts';
import type { Accel } from './args.ts';
import { readHistory } from './console.ts';
import { BootTimeoutError, hostAvailableMiB, launchVm, reattach, stopQemu, type LifecycleContext } from './lifecycle.ts';
import { setGuestMemory } from './memory.ts';
import {
  disksToSend, exportLocalDisks, hasDisksToCopy, localPool, mirrorLocalDisks, removeLocalDisks, resolveLocalDisks, stopExports, takesOverCopies,
} from './local-disks.ts';
import { checkMigrationUri, freePort, runMigration } from './migrate.ts';
import { tearDownNics } from './network.ts';
import { checkVmId, vmPaths, vmsDir } from './paths.ts';
import { QemuVm, readRecord, type VmHooks } from './vm.ts';
import { DriverListeners } from '../listeners.ts';
import { exists, resizeVolume } from './images.ts';
import { DiskReplicas } from './disk-replicas.ts';
import { replicaDisks } from './replicas.ts';

export interface QemuDriverOptions {
  dataDir: string;
  /** Where disks that live on this host only are (`local` disks); the agent's local pool. <dataDir>/local-pool by default. */
  localPoolDir?: string;
  hostname?: string;
  /** Address other hosts reach this one at; incoming migrations listen on it. */
  address?: string;
  accel?: Accel;
  qemuBinary?: string;
  /** Serial output that proves a kernel-booted guest is up; start() then waits for it. */
  guestReadyPattern?: RegExp;
  bootTimeoutMs?: number;
  /** Graceful stop's wait before it forces, when the caller gives none. */
  stopTimeoutMs?: number;
  /** Memory a shrink leaves above what the guest uses. */
  memoryMarginMiB?: number;
  /** How long a memory change may take to reach the guest before it is reported as not reached. */
  memorySettleTimeoutMs?: number;
  migrationBandwidthBytes?: number;
  /** The pause QEMU may take to hand a VM over; the default keeps measured downtime under 50 ms. */
  migrationDowntimeLimitMs?: number;
  /** How migrations leave this host; `auto` (the default) copies live under KVM and paused under TCG. */
  migrationMode?: MigrationMode;
  probeGuest?: ProbeGuest;
  probeTimeoutMs?: number;
  probeCacheFile?: string;
  /** The KVM device; probing needs read and write access to it. */
  kvmDevice?: string;
  /** How long guest writes wait for a replica that went away before it is degraded (QEMU's reconnect-delay). */
  replicaReconnectDelayS?: number;
  /** How often replica NBD servers are probed; one that stops accepting connections is cut off (replicas.ts). */
  replicaWatchIntervalMs?: number;
  /** How long the guest's swap waits for a donor that went away to come back (QEMU's reconnect-delay). */
  remoteMemoryReconnectDelayS?: number;
  log?: AccelLog;
}

/**
 * QEMU's own default is 300 ms. With 30 ms the handover of a guest writing ~470 MiB/s measured 3-25 ms on a
 * quiet host and up to 43 ms on a busy one (QEMU's estimate of the final pause can overshoot its limit); the
 * price is more copy rounds, which auto-converge bounds.
 */
const MIGRATION_DOWNTIME_LIMIT_MS = 30;

/**
 * A live copy trusts QEMU's dirty-page tracking. Under KVM the kernel tracks them; under TCG QEMU 7.2 tracks
 * them in its own TLB and misses writes to memory regions it syncs by its fast path, which the RAM padding
 * keeps main RAM off but not virtio-mem memory (see ramKiB in args.ts). So TCG pauses the guest for the copy
 * unless told otherwise: slower, never wrong (bench/qemu.ts counts every write over 50 such moves).
 */
export function pausesForMigration(mode: MigrationMode, accel: Accel): boolean {
  return mode === 'paused' || (mode === 'auto' && accel === 'tcg');
}

export async function createQemuDriver(opts: QemuDriverOptions): Promise<HypervisorDriver> {
  const qemuBinary = opts.qemuBinary ?? 'qemu-system-x86_64';
  await mkdir(vmsDir(opts.dataDir), { recursive: true });
  const accelOpts: AccelOptions = { ...opts, qemuBinary };
  const driver = new QemuDriver(opts, qemuBinary, accelOpts, await chooseAccel(accelOpts));
  await driver.init();
  return driver;
}

class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  private readonly vms = new Map<string, QemuVm>();
  private readonly listeners = new DriverListeners();
  private readonly locks = new Map<string, Promise<unknown>>();
  /** NBD address of each incoming VM that receives local disks. */
  private readonly incomingNbd = new Map<string, string>();
  private readonly ctx: LifecycleContext;
  private readonly hostname: string;
  private readonly address: string;
  private closed = false;
  /** A probe this driver started after a guest did not boot under KVM; later failures wait for it. */
  private reprobing: Promise<AccelChoice> | undefined;
  private readonly replicas: DiskReplicas;
  private readonly remoteMemory: RemoteMemoryOptions;

  constructor(
    private readonly opts: QemuDriverOptions,
    binary: string,
    private readonly accelOpts: AccelOptions,
    private choice: AccelChoice,
  ) {
    this.hostname = opts.hostname ?? osHostname();
    this.address = opts.address ?? '127.0.0.1';
    const hooks: VmHooks = {
      stateChanged: (vm) => this.emit({ type: 'vm-state', vm: vm.snapshot() }),
      consoleOutput: (vm, data) => this.emit({ type: 'console', vmId: vm.id, data }),
    };
    this.ctx = {
      binary,
      owner: opts.dataDir,
      hooks,
      bootTimeoutMs: opts.bootTimeoutMs ?? 120_000,
      guestReadyPattern: opts.guestReadyPattern,
      log: opts.log ?? (() => undefined),
    };
    this.replicas = new DiskReplicas({
      reconnectDelayS: opts.replicaReconnectDelayS ?? 10,
      watchIntervalMs: opts.replicaWatchIntervalMs ?? 5000,
      vms: () => this.vms.values(),
      emit: (vm) => this.emit({ type: 'vm-state', vm: vm.snapshot() }),
      log: this.ctx.log,
    });
    this.remoteMemory = {
      reconnectDelayS: opts.remoteMemoryReconnectDelayS ?? 30,
      swaponTimeoutMs: 60_000,
      swapoffTimeoutMs: 300_000,
      emit: (vm) => this.emit({ type: 'vm-state', vm: vm.snapshot() }),
    };
  }

  /** Finds the VMs earlier driver instances left running (or stopped) in the data dir. */
  async init(): Promise<void> {
    for (const id of await readdir(vmsDir(this.opts.dataDir))) {
      const paths = vmPaths(this.opts.dataDir, id);
      const record = await readRecord(paths.spec);
      if (!record || record.spec.id !== id) continue;
      const vm = await reattach(this.ctx, record, paths);
      if (!vm) {
        await rm(paths.dir, { recursive: true, force: true });
        continue;
      }
      this.vms.set(id, vm);
      await settleInterrupted(vm);
      if (vm.qmp && (vm.state === 'running' || vm.state === 'paused')) {
        this.replicas.watch(vm);
        await this.replicas.ensure(vm);
      }
    }
  }

  async facts(): Promise<HostFacts> {
    this.checkOpen();
    return {
      hostname: this.hostname,
      cpus: hostCpus().length,
      memoryMiB: Math.floor(totalmem() / (1024 * 1024)),
      memoryFreeMiB: await hostAvailableMiB(),
      driver: 'qemu',
      address: this.address,
      capabilities: ['balloon', 'virtio-mem', 'live-migration', 'console', 'replicas'],
      accelerator: this.accel,
    };
  }

  private get accel(): Accel {
    return this.choice.accel;
  }

  /** Takes up a newer answer another driver of this process may have probed since. */
  private async refreshAccel(): Promise<AccelChoice> {
    const before = this.choice.accel;
    this.choice = await currentAccel(this.accelOpts, this.choice);
    if (this.choice.accel !== before) this.emit({ type: 'facts-changed' });
    return this.choice;
  }

  /**
   * A kernel guest did not boot under KVM. A KVM verdict can be stale (a new host kernel or firmware, a verdict
   * of an earlier version): probe again so later VMs use the new answer, and say what happened in the error.
   */
  private async kvmBootTimedOut(vmId: string, err: BootTimeoutError, used: AccelChoice): Promise<DriverError> {
    if (used.how === 'forced') return new DriverError('BOOT_FAILED', `${err.message} under KVM (${used.reason}, so it was not probed again)`);
    this.reprobing ??= reprobeAccel(this.accelOpts, used).finally(() => (this.reprobing = undefined));
    const now = await this.reprobing;
    const changed = now.accel !== this.choice.accel;
    this.choice = now;
    if (changed) this.emit({ type: 'facts-changed' });
    this.ctx.log(
      'a guest did not boot under KVM: probed the accelerator again',
      { vmId, before: used.accel, after: now.accel, evidence: now.verdict?.evidence, reason: now.reason },
      'warn',
    );
    const outcome = now.accel === 'kvm'
      ? 'a Linux kernel boots under KVM here, so this guest itself did not boot'
      : `VMs on this host run under TCG from now on; start ${vmId} again`;
    return new DriverError('BOOT_FAILED', `${err.message} under KVM; the accelerator was probed again (${now.reason}): ${outcome}`);
  }

  /** A paused guest runs on: `cont`, and its RESUME event makes it running. */
  private async resume(vm: QemuVm): Promise<DriverVmStatus> {
    await vm.qmp!.call('cont', undefined);
    vm.setState('running');
    await vm.enableStats();
    return vm.status();
  }

  pidFile(vmId: string): string {
    return vmPaths(this.opts.dataDir, vmId).pidfile;
  }

  async list(): Promise<DriverVmStatus[]> {
    this.checkOpen();
    return Promise.all([...this.vms.values()].map((vm) => this.statusOf(vm)));
  }

  async status(vmId: string): Promise<DriverVmStatus> {
    return this.statusOf(this.get(vmId));
  }

  private async statusOf(vm: QemuVm): Promise<DriverVmStatus> {
    await this.replicas.refresh(vm);
    return vm.status();
  }

  start(spec: DriverVmSpec, signal?: AbortSignal): Promise<DriverVmStatus> {
    this.checkOpen();
    checkSpec(spec);
    spec = resolveLocalDisks(spec, this.opts.localPoolDir ?? localPool(this.opts.dataDir));
    return this.locked(spec.id, async () => {
      const existing = this.vms.get(spec.id);
      if (existing?.state === 'incoming') throw new DriverError('VM_EXISTS', `${spec.id} is arriving by migration`);
      if (existing?.alive) {
        // Control asks a guest left paused to run here: it resumes where it was.
        if (existing.state === 'paused' && existing.qmp) return this.resume(existing);
        if (existing.state !== 'crashed') return existing.status();
        // A guest that panicked leaves QEMU running; starting it again means a fresh QEMU.
        await stopQemu(existing, { force: true, timeoutMs: 0, reason: existing.reason });
        existing.detach();
      }
      if (signal?.aborted) throw new DriverError('BOOT_FAILED', `start of ${spec.id} cancelled`);
      const free = await hostAvailableMiB();
      if (spec.memoryMiB > free) {
        throw new DriverError('INSUFFICIENT_MEMORY', `${spec.id} needs ${spec.memoryMiB} MiB, the host has ${free} MiB available`);
      }
      const paths = vmPaths(this.opts.dataDir, spec.id);
      await mkdir(paths.dir, { recursive: true });
      const used = await this.refreshAccel();
      const vm = new QemuVm({ spec, accel: used.accel, mode: 'run' }, paths, this.ctx.hooks);
      await vm.saveRecord();
      this.vms.set(spec.id, vm);
      vm.setState('starting');
      try {
        await launchVm(this.ctx, vm, { accel: used.accel, signal });
      } catch (caught) {
        const err = caught instanceof BootTimeoutError && used.accel === 'kvm' ? await this.kvmBootTimedOut(spec.id, caught, used) : caught;
        await tearDownNics(this.opts.dataDir, spec.id, spec.nics);
        vm.setState('stopped', err instanceof Error ? err.message : String(err));
        throw err instanceof DriverError ? err : new DriverError('BOOT_FAILED', String(err));
      }
      this.replicas.watch(vm);
      vm.setState('running');
      await this.replicas.ensure(vm);
      return vm.status();
    });
  }

  stop(vmId: string, opts: StopOptions = {}): Promise<void> {
    this.get(vmId);
    return this.locked(vmId, async () => {
      // Looked up under the lock: a start that ran first may have replaced the record.
      const vm = this.get(vmId);
      if (vm.state === 'incoming') throw new DriverError('VM_NOT_RUNNING', `${vmId} has not arrived yet; abort the incoming migration`);
      if (!vm.alive) return; // stopped, or crashed and gone: nothing to stop
      await stopQemu(vm, {
        force: opts.force ?? false, timeoutMs: opts.timeoutMs ?? this.opts.stopTimeoutMs ?? 60_000,
        beforeQuit: (qmp) => this.replicas.end(vm, qmp),
      });
      await tearDownNics(this.opts.dataDir, vmId, vm.spec.nics);
    });
  }

  async reboot(vmId: string): Promise<void> {
    const vm = this.get(vmId);
    if ((vm.state !== 'running' && vm.state !== 'paused') || !vm.qmp) {
      throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    }
    await vm.qmp.call('system_reset', undefined).catch(internal);
  }

  delete(vmId: string): Promise<void> {
    this.checkOpen();
    return this.locked(vmId, async () => {
      const vm = this.vms.get(vmId);
      if (!vm) return;
      await this.retire(vm, 'deleted');
      if (vm.state !== 'stopped') vm.setState('stopped', 'deleted');
    });
  }

  async setMemory(vmId: string, targetMiB: number): Promise<DriverVmStatus> {
    const vm = this.get(vmId);
    if (vm.state !== 'running' || !vm.qmp) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    await setGuestMemory(vm.qmp, vm.spec, targetMiB, {
      marginMiB: this.opts.memoryMarginMiB ?? 32,
      statsTimeoutMs: 30_000,
      settleTimeoutMs: this.opts.memorySettleTimeoutMs ?? 60_000,
      hostAvailableMiB,
    }).catch(internal);
    const status = await vm.status();
    this.emit({ type: 'vm-state', vm: status });
    return status;
  }

  prepareIncoming(spec: DriverVmSpec): Promise<MigrationTarget> {
    this.checkOpen();
    checkSpec(spec);
    spec = resolveLocalDisks(spec, this.opts.localPoolDir ?? localPool(this.opts.dataDir));
    return this.locked(spec.id, async () => {
      const existing = this.vms.get(spec.id);
      const viaReplica = takesOverCopies(spec) ? { viaReplica: true } : {};
      if (existing?.state === 'incoming' && existing.record.incomingUri && existing.alive) {
        const nbd = this.incomingNbd.get(spec.id);
        return { uri: existing.record.incomingUri, ...(nbd ? { nbd } : {}), ...viaReplica };
      }
      if (existing?.qmp && existing.alive) throw new DriverError('VM_EXISTS', `${spec.id} already runs here`);
      const free = await hostAvailableMiB();
      if (spec.memoryMiB > free) {
        throw new DriverError('INSUFFICIENT_MEMORY', `${spec.id} needs ${spec.memoryMiB} MiB, the host has ${free} MiB available`);
      }
      const paths = vmPaths(this.opts.dataDir, spec.id);
      await mkdir(paths.dir, { recursive: true });
      await this.refreshAccel();
      // A local disk left here by an earlier visit is stale: the mirror only sends the source's top layer,
      // so the destination must start from a fresh overlay. A copy taken over is the disk and must be here.
      await removeLocalDisks(spec);
      for (const d of spec.disks) {
        if (d.replicaHere && !(await exists(d.path))) throw new DriverError('MIGRATION_FAILED', `the copy ${d.path} this host should take over is not here`);
      }
      // The port is free when chosen but QEMU binds it later: a clash makes QEMU exit, and we pick another.
      let lastErr: unknown;
      for (let attempt = 0; attempt < 3; attempt++) {
        const uri = `tcp:${this.address}:${await freePort(this.address)}`;
        const vm = new QemuVm({ spec, accel: this.accel, mode: 'incoming', incomingUri: uri }, paths, this.ctx.hooks);
        await vm.saveRecord();
        this.vms.set(spec.id, vm);
        try {
          // Copies taken over stay closed (QEMU opens incoming disks without locks or writes) until the
          // guest runs, which waits for their servers to let go (completeIncoming).
          await launchVm(this.ctx, vm, { accel: this.accel, incoming: uri, paused: !!viaReplica.viaReplica });
          if (viaReplica.viaReplica) {
            await vm.qmp!.call('migrate-set-capabilities', { capabilities: [{ capability: 'late-block-activate', state: true }] });
          }
        } catch (err) {
          lastErr = err;
          if (vm.alive) await stopQemu(vm, { force: true, timeoutMs: 0, reason: 'incoming setup failed' }).catch(() => undefined);
          this.vms.delete(spec.id);
          continue;
        }
        vm.setState('incoming');
        if (!hasDisksToCopy(spec)) return { uri, ...viaReplica };
        try {
          const nbd = await exportLocalDisks(vm.qmp!, spec, this.address);
          this.incomingNbd.set(spec.id, nbd);
          return { uri, nbd, ...viaReplica };
        } catch (err) {
          await this.retire(vm, 'could not export local disks');
          throw new DriverError('MIGRATION_FAILED', `exporting local disks for ${spec.id}: ${String(err)}`);
        }
      }
      await rm(paths.dir, { recursive: true, force: true });
      throw lastErr instanceof DriverError ? lastErr : new DriverError('MIGRATION_FAILED', String(lastErr));
    });
  }

  migrate(
    vmId: string,
    target: MigrationTarget,
    onProgress?: (p: MigrationProgress) => void,
    signal?: AbortSignal,
  ): Promise<MigrationResult> {
    this.get(vmId);
    checkMigrationUri(target.uri);
    return this.locked(vmId, async () => {
      const vm = this.get(vmId);
      const qmp = vm.qmp;
      if (vm.state !== 'running' || !qmp) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
      const viaReplica = !!target.viaReplica;
      // A mirror would not follow the VM to any other host: the copy there would silently fall behind.
      if (replicaDisks(vm.spec).length > 0 && !viaReplica) throw new DriverError('MIGRATION_FAILED', `${vmId} has disk replicas; it moves only to the host of their copies`);
      if (viaReplica) await this.replicas.requireInStep(vm);
      const sent = disksToSend(vm.spec, viaReplica);
      // The plugged export would not follow the VM, and its swapped pages are the guest's memory.
      if (vm.record.remoteMemory?.length) throw new DriverError('MIGRATION_FAILED', `${vmId} has remote memory; detach it before it moves`);
      vm.migrating = true;
      let result: MigrationResult;
      let finishMirrors: (() => Promise<void>) | undefined;
      try {
        if (hasDisksToCopy(sent)) {
          if (!target.nbd) throw new DriverError('MIGRATION_FAILED', `${vmId} has local disks and the destination offers no NBD export`);
          finishMirrors = await mirrorLocalDisks(qmp, sent, target.nbd, signal);
        }
        result = await runMigration(qmp, target.uri, {
          maxBandwidthBytes: this.opts.migrationBandwidthBytes ?? 10 * 1024 ** 3,
          downtimeLimitMs: this.opts.migrationDowntimeLimitMs ?? MIGRATION_DOWNTIME_LIMIT_MS,
          // The guest's own accelerator: it may have started before this host's verdict changed.
          paused: pausesForMigration(this.opts.migrationMode ?? 'auto', vm.record.accel),
          pollIntervalMs: 100,
          onProgress,
          signal,
        });
      } finally {
        // Success: the guest is paused here, so the mirrors are in step and end cleanly. Failure: they stop.
        await finishMirrors?.();
        vm.migrating = false;
      }
      // Paused here, every write the guest saw complete is in the copies: their mirrors end cleanly now,
      // while the copies' servers still answer (the destination stops them before its guest runs).
      if (viaReplica) await this.replicas.end(vm, qmp);
      // The guest runs on the destination now; this copy is paused and must never run again.
      await this.retire(vm, 'migrated to another host');
      return result;
    });
  }

  async completeIncoming(vmId: string, timeoutMs = 120_000, release?: (disks: DiskSpec[]) => Promise<void>): Promise<DriverVmStatus> {
    const vm = this.get(vmId);
    const deadline = Date.now() + timeoutMs;
    const copies = vm.spec.disks.filter((d) => d.replicaHere);
    const arrived = async () => {
      this.incomingNbd.delete(vmId);
      if (hasDisksToCopy(vm.spec) && vm.qmp) await stopExports(vm.qmp);
      return vm.status();
    };
    for (;;) {
      if (vm.state === 'running' && vm.record.mode === 'run') return arrived();
      const qmp = vm.qmp;
      if (!qmp || !vm.alive) throw new DriverError('MIGRATION_FAILED', `${vmId} did not arrive: ${vm.reason ?? 'QEMU is gone'}`);
      const status = await qmp.call('query-status', undefined).catch(() => undefined);
      if (status?.running) {
        await vm.arrived();
        return arrived();
      }
      if (copies.length > 0) {
        if ((await qmp.call('query-migrate', undefined).catch(() => undefined))?.status === 'completed') {
          // The whole guest is here and the source paused: the copies' servers let go, then QEMU takes the
          // disks (and their write locks, so a server still holding one makes `cont` fail, not corrupt it).
          await release?.(copies);
          await qmp.call('cont', undefined);
          continue;
        }
        if (Date.now() > deadline) throw new DriverError('MIGRATION_FAILED', `${vmId} did not arrive within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      // Only a source started without `migration.store-global-state=off` (args.ts) hands over a guest it had
      // paused for the copy still paused: run it, as the source would have.
      if (status?.status === 'paused') await qmp.call('cont', undefined).catch(() => undefined);
      if (Date.now() > deadline) throw new DriverError('MIGRATION_FAILED', `${vmId} did not arrive within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Ends this host's copy of a VM for good: QEMU, its NICs, its directory and local disks, and its entry. */
  private async retire(vm: QemuVm, reason: string): Promise<void> {
    await stopQemu(vm, { force: true, timeoutMs: 0, reason, beforeQuit: (qmp) => this.replicas.end(vm, qmp) });
    vm.detach();
    await tearDownNics(this.opts.dataDir, vm.id, vm.spec.nics);
    // Disks inside the VM directory and on this host's own pool go with it; shared pools belong to others.
    await rm(vm.paths.dir, { recursive: true, force: true });
    await removeLocalDisks(vm.spec);
    this.vms.delete(vm.id);
  }

  abortIncoming(vmId: string): Promise<void> {
    this.checkOpen();
    return this.locked(vmId, async () => {
      const vm = this.vms.get(vmId);
      if (!vm) return;
      if (vm.record.mode !== 'incoming') throw new DriverError('VM_EXISTS', `${vmId} is ${vm.state}, not an incoming migration`);
      this.incomingNbd.delete(vmId);
      await this.retire(vm, 'incoming migration aborted');
      if (vm.state !== 'stopped') vm.setState('stopped', 'incoming migration aborted');
    });
  }

  subscribe(listener: (event: DriverEvent) => void): () => void {
    return this.listeners.add(listener);
  }

  async consoleWrite(vmId: string, data: string): Promise<void> {
    const vm = this.get(vmId);
    if (vm.state !== 'running' && vm.state !== 'paused' && vm.state !== 'crashed') {
      throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    }
    await vm.consoleWrite(data).catch((err: unknown) => {
      throw new DriverError('INTERNAL', `${vmId}: console not available (${String(err)})`);
    });
  }

  growDisk(vmId: string, index: number, sizeMiB: number): Promise<void> {
    this.checkOpen();
    return this.locked(vmId, async () => {
      const vm = this.get(vmId);
      if (vm.alive) throw new DriverError('VM_EXISTS', `${vmId} is ${vm.state}; stop it to resize its disk`);
      const disk = vm.spec.disks[index];
      if (!disk) throw new DriverError('IMAGE_INVALID', `${vmId} has no disk ${index}`);
      // A disk not made yet is made at the size its next start asks for.
      if (await exists(disk.path)) await resizeVolume(disk.path, sizeMiB);
    });
  }

  async consoleHistory(vmId: string): Promise<string> {
    return readHistory(this.get(vmId).paths.consoleLog);
  }

  attachReplica(vmId: string, disk: number, target: ReplicaTarget): Promise<DriverVmStatus> {
    this.get(vmId);
    return this.locked(vmId, () => this.replicas.attach(this.get(vmId), disk, target));
  }

  detachReplica(vmId: string, disk: number): Promise<DriverVmStatus> {
    this.get(vmId);
    return this.locked(vmId, () => this.replicas.detach(this.get(vmId), disk));
  }

  attachRemoteMemory(vmId: string, slot: number, target: RemoteMemoryTarget, sizeMiB: number): Promise<DriverVmStatus> {
    checkRemoteMemory(slot, target, sizeMiB);
    this.get(vmId);
    return this.locked(vmId, async () => {
      const vm = this.get(vmId);
      await attachRemoteMemory(vm, slot, target, sizeMiB, this.remoteMemory);
      return vm.status();
    });
  }

  detachRemoteMemory(vmId: string, slot: number): Promise<DriverVmStatus | undefined> {
    checkRemoteMemory(slot);
    this.checkOpen();
    if (!this.vms.has(vmId)) return Promise.resolve(undefined);
    return this.locked(vmId, async () => {
      const vm = this.vms.get(vmId);
      if (!vm) return undefined;
      await detachRemoteMemory(vm, slot, this.remoteMemory);
      return vm.status();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.replicas.close();
    await Promise.allSettled([...this.locks.values()]);
    for (const vm of this.vms.values()) vm.detach();
    this.listeners.clear();
  }

  private get(vmId: string): QemuVm {
    this.checkOpen();
    const vm = this.vms.get(vmId);
    if (!vm) throw new DriverError('VM_NOT_FOUND', `no VM ${vmId} on ${this.hostname}`);
    return vm;
  }

  private checkOpen(): void {
    if (this.closed) throw new DriverError('INTERNAL', `qemu driver of ${this.hostname} is closed`);
  }

  /** One mutating operation per VM at a time, in call order. */
  private locked<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(vmId) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    const tail = next.catch(() => undefined);
    this.locks.set(vmId, tail);
    void tail.then(() => {
      if (this.locks.get(vmId) === tail) this.locks.delete(vmId);
    });
    return next;
  }

  private emit(event: DriverEvent): void {
    this.listeners.emit(event);
  }
}

/** QMP and system errors leave the driver as DriverErrors, so control gets a code for every failure. */
function internal(err: unknown): never {
  if (err instanceof DriverError) throw err;
  throw new DriverError('INTERNAL', err instanceof Error ? err.message : String(err));
}

function checkSpec(spec: DriverVmSpec): void {
  const problems: string[] = [];
  const idProblem = checkVmId(spec.id);
  if (idProblem) problems.push(idProblem);
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1) problems.push('cpus must be a positive integer');
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 16) problems.push('memoryMiB must be an integer of at least 16');
  if (!(spec.maxMemoryMiB >= spec.memoryMiB)) problems.push('maxMemoryMiB must be at least memoryMiB');
  if (problems.length > 0) throw new DriverError('BOOT_FAILED', `invalid VM spec ${spec.id}: ${problems.join(', ')}`);
}
