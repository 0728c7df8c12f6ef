// Builds the qemu-system-x86_64 command line for a VM; source and migration destination share one device model.
import type { DriverVmSpec } from '../types.ts';
import type { VmPaths } from './paths.ts';

export type Accel = 'kvm' | 'tcg';

/** How one NIC is attached on this host: the spec's bridge mode becomes a tap we created, or user mode. */
export type NicBackend = { kind: 'user'; mac: string } | { kind: 'tap'; ifname: string; mac: string };

export interface QemuLaunch {
  spec: DriverVmSpec;
  paths: VmPaths;
  accel: Accel;
  nics: NicBackend[];
  /** Destination of a live migration: `tcp:host:port` to listen on. */
  incoming?: string;
  /** Stay paused once the migration is in (`-S`): the caller runs the guest when its disks are free. */
  paused?: boolean;
}

/** QOM ids the driver addresses over QMP. */
export const BALLOON_ID = 'balloon0';
export const BALLOON_PATH = `/machine/peripheral/${BALLOON_ID}`;
export const VMEM_ID = 'vmem0';
export const VMEM_BLOCK_BYTES = 2 * 1024 * 1024;

/** QEMU option values are comma-separated: a literal comma is written twice. */
function esc(value: string): string {
  return value.replaceAll(',', ',,');
}

export function hasVirtioMem(spec: DriverVmSpec): boolean {
  return spec.maxMemoryMiB > spec.memoryMiB;
}

/** virtio-mem grows in whole blocks: the hot-pluggable region is rounded down to them. */
export function virtioMemSizeMiB(spec: DriverVmSpec): number {
  const blockMiB = VMEM_BLOCK_BYTES / (1024 * 1024);
  return Math.floor((spec.maxMemoryMiB - spec.memoryMiB) / blockMiB) * blockMiB;
}

export const TCG_RAM_PAD_KIB = 8;

/**
 * Main RAM as QEMU's `-m` size, in KiB. Under TCG it is 8 KiB more than asked: QEMU before 9.0 syncs a RAM
 * block whose size is a multiple of 64 pages by a fast path that leaves TCG's TLB letting writes skip dirty
 * tracking, so a guest that writes while it migrates loses writes (fixed upstream in 9.0 by "physmem: Fix
 * migration dirty bitmap coherency with TCG memory access"). Any other size takes QEMU's per-page path, which
 * keeps the TLB in step; QEMU rounds RAM to 8 KiB, so 8 KiB is the least that works. It applies on every
 * QEMU version so that hosts on different versions keep one device model and can migrate to each other.
 * Not covered: memory plugged by virtio-mem (its size is whole blocks, so it keeps the fast path); that is
 * why TCG hosts pause guests for their migration (pausesForMigration in driver.ts). (Losses once seen with
 * the padding on busy hosts came from doubled characters in the console history the check read, not from
 * the guest: see console.ts.) KVM tracks dirty pages in the kernel and has neither problem.
 */
export function ramKiB(spec: DriverVmSpec, accel: Accel): number {
  return spec.memoryMiB * 1024 + (accel === 'tcg' ? TCG_RAM_PAD_KIB : 0);
}

export function qemuArgs(l: QemuLaunch): string[] {
  const { spec, paths } = l;
  const args = [
    '-name', `guest=${esc(spec.name || spec.id)},debug-threads=on`,
    '-machine', 'pc',
    '-accel', l.accel,
    '-smp', String(spec.cpus),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-msg', 'timestamp=on',
    '-pidfile', paths.pidfile,
    '-qmp', `unix:${esc(paths.qmp)},server=on,wait=off`,
    // A socket carries keystrokes both ways; the logfile keeps history while nobody is connected.
    '-chardev', `socket,id=ser0,path=${esc(paths.serialSocket)},server=on,wait=off,logfile=${esc(paths.serialLog)},logappend=on`,
    '-serial', 'chardev:ser0',
    // Free page reporting: the guest hands pages it frees back to the host, so what the host reports
    // available (and the memory broker lends) follows what guests really use.
    '-device', `virtio-balloon-pci,id=${BALLOON_ID},deflate-on-oom=on,free-page-reporting=on`,
    // The guest agent's port: the host runs commands in the guest through it (swapon of remote memory).
    '-chardev', `socket,id=qga0,path=${esc(paths.guestAgent)},server=on,wait=off`,
    '-device', 'virtio-serial-pci,id=vser0',
    '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
    // Without the run state in the migration stream the destination starts the guest the moment it has it,
    // also one paused for the copy (QEMU would otherwise keep it paused there, as it was here).
    '-global', 'migration.store-global-state=off',
  ];
  const vmemMiB = virtioMemSizeMiB(spec);
  const ram = ramKiB(spec, l.accel);
  if (hasVirtioMem(spec) && vmemMiB > 0) {
    args.push(
      '-m', `${ram}k,maxmem=${ram + vmemMiB * 1024}k`,
      '-object', `memory-backend-ram,id=${VMEM_ID}-ram,size=${vmemMiB}M`,
      '-device', `virtio-mem-pci,id=${VMEM_ID},memdev=${VMEM_ID}-ram,block-size=${VMEM_BLOCK_BYTES},requested-size=0`,
    );
  } else {
    args.push('-m', `${ram}k`);
  }
  const boot = spec.boot;
  if (boot.kind === 'kernel') {
    args.push('-kernel', boot.kernelPath, '-initrd', boot.initrdPath);
    args.push('-append', boot.cmdline ?? 'console=ttyS0 memhp_default_state=online_movable');
  }
  spec.disks.forEach((disk, i) => {
    // cache=none would be safer for shared pools but tmpfs (tests) refuses O_DIRECT; writeback + flushes is QEMU's default.
    args.push('-blockdev', `driver=file,node-name=disk${i}-file,filename=${esc(disk.path)}${disk.direct ? ',cache.direct=on' : ''}`);
    args.push('-blockdev', `driver=${disk.format},node-name=disk${i},file=disk${i}-file`);
    const bootindex = boot.kind === 'disk' && i === 0 ? ',bootindex=0' : '';
    // A local disk is written through an NBD export while it arrives by migration: let the device share it.
    const share = disk.local ? ',share-rw=on' : '';
    args.push('-device', `virtio-blk-pci,id=vd${i},drive=disk${i}${bootindex}${share}`);
  });
  l.nics.forEach((nic, i) => {
    if (nic.kind === 'user') {
      args.push('-netdev', `user,id=net${i}`);
    } else {
      args.push('-netdev', `tap,id=net${i},ifname=${nic.ifname},script=no,downscript=no`);
    }
    args.push('-device', `virtio-net-pci,id=nic${i},netdev=net${i},mac=${nic.mac}`);
  });
  if (l.incoming) args.push('-incoming', l.incoming);
  if (l.paused) args.push('-S');
  return args;
}
