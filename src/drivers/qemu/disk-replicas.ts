// The QEMU driver's side of disk replicas: starts, watches, rebuilds and ends the mirror of each VM disk that
// names a replica target, keeps the state it reports, and cuts off replica hosts that stop answering.
import { DriverError, type DriverVmStatus, type ReplicaTarget } from '../types.ts';
import type { AccelLog } from './accel.ts';
import type { QmpClient } from './qmp.ts';
import {
  type ReplicaOptions, checkTarget, isReplicaJob, reachable, removeReplica, replicaDisks, replicaJobId, replicaStatuses,
  sameTarget, startReplica, yankReplica,
} from './replicas.ts';
import type { QemuVm } from './vm.ts';

export interface DiskReplicasOptions {
  reconnectDelayS: number;
  watchIntervalMs: number;
  /** The driver's VMs, for the watchdog. */
  vms: () => Iterable<QemuVm>;
  /** Reports a VM's changed state (its replicas in it). */
  emit: (vm: QemuVm) => void;
  log: AccelLog;
}

const up = (vm: QemuVm) => vm.state === 'running' || vm.state === 'paused';

export class DiskReplicas {
  private readonly opts: ReplicaOptions;
  private readonly timer: NodeJS.Timeout;
  private readonly probeTimeoutMs: number;
  private probing = false;
  private closed = false;
  /** Probes in a row a replica's NBD server did not answer, by `vmId/disk`. */
  private readonly misses = new Map<string, number>();

  constructor(private readonly o: DiskReplicasOptions) {
    this.opts = { reconnectDelayS: o.reconnectDelayS };
    this.probeTimeoutMs = Math.min(5000, o.watchIntervalMs);
    this.timer = setInterval(() => void this.probe(), o.watchIntervalMs);
    this.timer.unref();
  }

  /** State events for a VM's replica jobs (a mirror got in step, or failed), on its current QMP link. */
  watch(vm: QemuVm): void {
    vm.qmp?.on('JOB_STATUS_CHANGE', (e) => {
      if (!isReplicaJob(e.data.id)) return;
      void this.refresh(vm).then(() => this.o.emit(vm));
    });
  }

  /** Reads the replica states from QEMU into the VM, where status and state events take them from. */
  async refresh(vm: QemuVm): Promise<void> {
    const qmp = vm.qmp;
    if (!qmp || !up(vm) || replicaDisks(vm.spec).length === 0) {
      vm.replicas = undefined;
      return;
    }
    vm.replicas = await replicaStatuses(qmp, vm.spec, vm.replicaFailures).catch(() => vm.replicas);
  }

  /** Mirrors every disk that has a replica target and no mirror yet: after a start, or a driver restart. */
  async ensure(vm: QemuVm): Promise<void> {
    const qmp = vm.qmp;
    const disks = replicaDisks(vm.spec);
    if (!qmp || disks.length === 0) return;
    const jobs = await qmp.call('query-block-jobs', undefined).catch(() => undefined);
    for (const disk of disks) {
      // A job already there (running, or failed and kept for its error) is the replica's state as it is.
      if (!jobs || jobs.some((j) => j.device === replicaJobId(disk))) continue;
      try {
        await startReplica(qmp, disk, vm.spec.disks[disk]!.replica!, this.opts);
        vm.replicaFailures.delete(disk);
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        vm.replicaFailures.set(disk, reason);
        this.o.log('replica not mirrored', { vmId: vm.id, disk, reason }, 'warn');
      }
    }
    await this.refresh(vm);
  }

  /** Before QEMU quits: every mirror ends cleanly (a ready one completes without switching disks). */
  /** Before the VM moves onto its copies: each must hold every write now, or the move would lose some. */
  async requireInStep(vm: QemuVm): Promise<void> {
    const qmp = vm.qmp;
    if (!qmp) throw new DriverError('VM_NOT_RUNNING', `${vm.id} is ${vm.state}`);
    const behind = (await replicaStatuses(qmp, vm.spec, vm.replicaFailures)).filter((r) => r.state !== 'synced');
    if (behind.length > 0) {
      const why = behind.map((r) => `disk ${r.disk} is ${r.state}${r.reason ? ` (${r.reason})` : ''}`).join('; ');
      throw new DriverError('MIGRATION_FAILED', `the copies of ${vm.id}'s disks are not in step: ${why}`);
    }
  }

  async end(vm: QemuVm, qmp: QmpClient): Promise<void> {
    for (const disk of replicaDisks(vm.spec)) await removeReplica(qmp, disk, this.opts);
  }

  /** Mirrors disk `disk` into `target` from scratch; the same target while it mirrors is left alone. */
  async attach(vm: QemuVm, disk: number, target: ReplicaTarget): Promise<DriverVmStatus> {
    checkTarget(target);
    const qmp = vm.qmp;
    if (!up(vm) || !qmp) throw new DriverError('VM_NOT_RUNNING', `${vm.id} is ${vm.state}`);
    const current = vm.spec.disks[disk];
    if (!current) throw new DriverError('IMAGE_INVALID', `${vm.id} has no disk ${disk}`);
    if (sameTarget(current.replica, target)) {
      await this.refresh(vm);
      const now = vm.replicas?.find((r) => r.disk === disk);
      if (now && now.state !== 'degraded') return vm.status();
    }
    await setTarget(vm, disk, target);
    vm.replicaFailures.delete(disk);
    try {
      await startReplica(qmp, disk, target, this.opts);
    } catch (err) {
      vm.replicaFailures.set(disk, err instanceof Error ? err.message : String(err));
      throw err instanceof DriverError ? err : new DriverError('REPLICA_FAILED', String(err));
    } finally {
      await this.refresh(vm);
      this.o.emit(vm);
    }
    return vm.status();
  }

  /** Ends the mirror of disk `disk` cleanly and forgets its target. */
  async detach(vm: QemuVm, disk: number): Promise<DriverVmStatus> {
    if (!vm.spec.disks[disk]) throw new DriverError('IMAGE_INVALID', `${vm.id} has no disk ${disk}`);
    if (vm.qmp) await removeReplica(vm.qmp, disk, this.opts);
    await setTarget(vm, disk, undefined);
    vm.replicaFailures.delete(disk);
    await this.refresh(vm);
    this.o.emit(vm);
    return vm.status();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }

  /**
   * A replica host that stops answering (no reset, no close: a partition, a hung daemon) is cut off, so the
   * guest's writes wait only reconnect-delay. Harmless when the peer is fine after all: QEMU reconnects and
   * repeats its requests.
   */
  private async probe(): Promise<void> {
    if (this.probing || this.closed) return;
    this.probing = true;
    try {
      for (const vm of this.o.vms()) {
        const qmp = vm.qmp;
        if (!qmp || vm.state !== 'running' || !vm.replicas) continue;
        for (const r of vm.replicas) {
          const key = `${vm.id}/${r.disk}`;
          if (r.state === 'degraded' || (await reachable(r.target, this.probeTimeoutMs))) {
            this.misses.delete(key);
            continue;
          }
          const misses = (this.misses.get(key) ?? 0) + 1;
          this.misses.set(key, misses);
          if (misses < 2) continue;
          this.misses.delete(key);
          this.o.log('replica not answering: cutting its connection', { vmId: vm.id, disk: r.disk, target: r.target }, 'warn');
          await yankReplica(qmp, r.disk);
        }
      }
    } finally {
      this.probing = false;
    }
  }
}

/** The record keeps the target, so a driver started later mirrors the same disk into it again. */
async function setTarget(vm: QemuVm, disk: number, target: ReplicaTarget | undefined): Promise<void> {
  const disks = vm.spec.disks.map((d, i) => {
    if (i !== disk) return d;
    const { replica: _old, ...rest } = d;
    return target ? { ...rest, replica: { ...target } } : rest;
  });
  vm.record = { ...vm.record, spec: { ...vm.spec, disks } };
  await vm.saveRecord();
}
