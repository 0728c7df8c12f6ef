// The simulated serial console: what a small Linux guest prints while it boots, and a bounded history.
import type { DriverVmSpec } from '../types.ts';

/** Real drivers keep only the tail of the serial output; the sim does the same so callers cannot rely on more. */
export const CONSOLE_HISTORY_CHARS = 64 * 1024;

export function appendHistory(history: string, data: string): string {
  const next = history + data;
  return next.length > CONSOLE_HISTORY_CHARS ? next.slice(next.length - CONSOLE_HISTORY_CHARS) : next;
}

/** Printed as soon as the VM is started: firmware and early kernel messages. */
export function earlyBootLines(spec: DriverVmSpec): string {
  const cmdline = spec.boot.kind === 'kernel' ? (spec.boot.cmdline ?? 'console=ttyS0') : 'BOOT_IMAGE=/vmlinuz console=ttyS0';
  return [
    'SeaBIOS (version sim-1.16)',
    spec.boot.kind === 'disk' ? 'Booting from Hard Disk...' : 'Booting from ROM...',
    '[    0.000000] Linux version 6.1.0-sim-amd64 (awan-sim)',
    `[    0.000000] Command line: ${cmdline}`,
    `[    0.000000] Memory: ${spec.memoryMiB * 1024}K available`,
    `[    0.010000] smpboot: Allowing ${spec.cpus} CPUs`,
    '[    0.200000] virtio_balloon virtio0: registered',
    spec.maxMemoryMiB > spec.memoryMiB ? `[    0.210000] virtio_mem virtio1: maximum size: ${spec.maxMemoryMiB - spec.memoryMiB} MiB` : '',
  ]
    .filter((line) => line !== '')
    .map((line) => `${line}\r\n`)
    .join('');
}

/** Printed when the guest reaches userspace: the point where the sim calls it running. */
export function bootedLines(spec: DriverVmSpec): string {
  return `[    0.900000] Run /init as init process\r\n\r\nWelcome to ${spec.name}\r\n${spec.name} login: `;
}

export function shutdownLines(force: boolean): string {
  return force ? '' : '\r\n[    9.000000] reboot: Power down\r\n';
}

export function rebootLines(): string {
  return '\r\n[    9.000000] reboot: Restarting system\r\n';
}

/** Echoes keystrokes as a terminal in cooked mode would, with a shell prompt after each line. */
export function echo(data: string): string {
  return data.replace(/\r\n?|\n/g, '\r\n# ');
}
