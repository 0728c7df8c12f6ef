// Where a VM's files live under the driver's data dir; one directory per VM so a restart can find them all.
import { join } from 'node:path';

export interface VmPaths {
  dir: string;
  spec: string;
  pidfile: string;
  qmp: string;
  serialSocket: string;
  /** QEMU's logfile of the serial chardev; doubles characters when the console reader falls behind. */
  serialLog: string;
  /** The driver's exact record of the serial console (console.ts), and how much of serialLog it holds. */
  consoleLog: string;
  consoleOffset: string;
  /** QEMU's own stderr: why it refused to start or died. */
  qemuLog: string;
  /** The chardev of the guest agent's virtio-serial port (guest-agent.ts). */
  guestAgent: string;
}

export function vmsDir(dataDir: string): string {
  return join(dataDir, 'vms');
}

export function vmPaths(dataDir: string, vmId: string): VmPaths {
  const dir = join(vmsDir(dataDir), vmId);
  return {
    dir,
    spec: join(dir, 'spec.json'),
    pidfile: join(dir, 'qemu.pid'),
    qmp: join(dir, 'qmp.sock'),
    serialSocket: join(dir, 'serial.sock'),
    serialLog: join(dir, 'serial.log'),
    consoleLog: join(dir, 'console.log'),
    consoleOffset: join(dir, 'console.offset'),
    qemuLog: join(dir, 'qemu.log'),
    guestAgent: join(dir, 'qga.sock'),
  };
}

/** VM ids become directory names and QEMU option values: keep them to a safe alphabet. */
export function checkVmId(vmId: string): string | undefined {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(vmId)) return `VM id ${JSON.stringify(vmId)} must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}`;
  return undefined;
}
