// The simulator's remote memory: a donor's exports are sizes set aside from its RAM, a borrower's devices
// are entries on the VM that its status reports. Same contract as the QEMU side (NBD export, hot-plugged
// virtio-blk used as swap), so control's memory broker is tested without either.
import { DriverError, type DriverVmStatus, type MemoryTarget, type RemoteMemoryDriver, type RemoteMemoryStatus } from '../types.ts';
import { isUp, type SimVm } from './vm.ts';

export interface SimRemoteMemoryDeps {
  address: string;
  freeMiB(): number;
  vm(vmId: string): SimVm;
  /** Reports the VM's new status and returns it. */
  changed(vm: SimVm): DriverVmStatus;
}

/** Ports of simulated exports: unique per process, as real ports are per host. */
let nextPort = 30_000;

export class SimRemoteMemory implements RemoteMemoryDriver {
  private readonly exports = new Map<string, { target: MemoryTarget; sizeMiB: number }>();

  constructor(private readonly deps: SimRemoteMemoryDeps) {}

  memoryLentMiB(): number {
    let n = 0;
    for (const e of this.exports.values()) n += e.sizeMiB;
    return n;
  }

  /** The names served now (tests check that none is left behind). */
  names(): string[] {
    return [...this.exports.keys()];
  }

  async exportMemory(name: string, sizeMiB: number): Promise<{ target: MemoryTarget; sizeMiB: number }> {
    const existing = this.exports.get(name);
    if (existing) return { target: { ...existing.target }, sizeMiB: existing.sizeMiB };
    const free = this.deps.freeMiB();
    if (sizeMiB > free) throw new DriverError('INSUFFICIENT_MEMORY', `cannot lend ${sizeMiB} MiB: the host has ${free} MiB free`);
    const entry = { target: { host: this.deps.address, port: nextPort++, exportName: name }, sizeMiB };
    this.exports.set(name, entry);
    return { target: { ...entry.target }, sizeMiB };
  }

  async unexportMemory(name: string): Promise<void> {
    this.exports.delete(name);
  }

  async attachRemoteMemory(vmId: string, slot: number, target: MemoryTarget, sizeMiB: number): Promise<DriverVmStatus> {
    const vm = this.deps.vm(vmId);
    if (!isUp(vm.state)) throw new DriverError('VM_NOT_RUNNING', `${vmId} is ${vm.state}`);
    vm.remote ??= new Map();
    const old = vm.remote.get(slot);
    if (old && (old.target.host !== target.host || old.target.port !== target.port || old.target.exportName !== target.exportName)) {
      throw new DriverError('VM_EXISTS', `${vmId} already has remote memory in slot ${slot}`);
    }
    if (!old) vm.remote.set(slot, { slot, target: { ...target }, sizeMiB, state: 'active', usedMiB: 0 });
    return this.deps.changed(vm);
  }

  async detachRemoteMemory(vmId: string, slot: number): Promise<DriverVmStatus> {
    const vm = this.deps.vm(vmId);
    vm.remote?.delete(slot);
    return this.deps.changed(vm);
  }

  /** Test knob: the guest has swapped this much out to its remote memory (the pages a dying donor takes with it). */
  useSwap(vmId: string, usedMiB: number): void {
    const vm = this.deps.vm(vmId);
    let left = usedMiB;
    for (const d of vm.remote?.values() ?? []) {
      d.usedMiB = Math.min(d.sizeMiB, left);
      left -= d.usedMiB;
    }
    this.deps.changed(vm);
  }
}

/** What a VM's status says of its remote memory. */
export function remoteMemoryStatus(vm: SimVm): Pick<DriverVmStatus, 'remoteMemory' | 'swapTotalMiB' | 'swapUsedMiB' | 'majorFaults'> {
  const devices = [...(vm.remote?.values() ?? [])];
  if (devices.length === 0) return {};
  const remoteMemory: RemoteMemoryStatus[] = devices.map(({ usedMiB: _u, ...d }) => ({ ...d, target: { ...d.target } }));
  return {
    remoteMemory,
    swapTotalMiB: devices.reduce((n, d) => n + d.sizeMiB, 0),
    swapUsedMiB: devices.reduce((n, d) => n + d.usedMiB, 0),
    majorFaults: 0,
  };
}
