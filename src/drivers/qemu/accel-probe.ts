// Boots the probe guest once under one accelerator and says how far it got: its marker, a timeout, or an exit.
import { spawn } from 'node:child_process';
import type { Accel } from './args.ts';

export interface ProbeGuest {
  kernelPath: string;
  initrdPath: string;
  /** Text on the serial console that proves the guest booted. */
  bootedMarker: string;
}

export type BootOutcome =
  | { kind: 'booted' }
  | { kind: 'timeout'; timeoutMs: number }
  /** QEMU ended (or could not start) before the marker; `detail` carries its last words. */
  | { kind: 'exited'; detail: string };

/** The probe must never outlive its deadline, not even when this process dies mid-probe: a hung KVM guest spins a CPU. */
const KILL_GRACE_S = 2;

export function describeOutcome(o: BootOutcome): string {
  if (o.kind === 'booted') return 'booted';
  if (o.kind === 'timeout') return `did not boot within ${o.timeoutMs} ms`;
  return `QEMU ended before the guest booted (${o.detail})`;
}

/**
 * Boots `guest` under `accel` with its console on QEMU's stdout and watches it for the marker; the child is
 * always gone when this resolves. Runs under coreutils `timeout`, so the probe dies by itself at its deadline.
 */
export function bootProbe(binary: string, accel: Accel, guest: ProbeGuest, timeoutMs: number): Promise<BootOutcome> {
  const qemu = [
    binary, '-accel', accel, '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot',
    '-kernel', guest.kernelPath, '-initrd', guest.initrdPath, '-append', 'console=ttyS0 panic=-1 quiet', '-serial', 'stdio',
  ];
  const deadlineS = String(Math.ceil(timeoutMs / 1000) + 1);
  const child = spawn('timeout', ['--kill-after', String(KILL_GRACE_S), deadlineS, ...qemu], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise<BootOutcome>((resolve) => {
    let outcome: BootOutcome | undefined;
    let console = '';
    let stderr = '';
    const finish = (o: BootOutcome): void => {
      if (outcome) return;
      outcome = o;
      clearTimeout(timer);
      // SIGTERM to `timeout` reaches QEMU too, and `--kill-after` follows up should QEMU ignore it.
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    };
    const timer = setTimeout(() => finish({ kind: 'timeout', timeoutMs }), timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      // Only a tail is kept: the marker may arrive split across chunks, the rest does not matter.
      console = (console + chunk).slice(-(guest.bootedMarker.length + 4096));
      if (console.includes(guest.bootedMarker)) finish({ kind: 'booted' });
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-2000);
    });
    child.once('error', (err) => {
      finish({ kind: 'exited', detail: err.message });
      resolve(outcome!);
    });
    child.once('close', (code, signal) => {
      const last = stderr.trim().split('\n').filter((l) => !/warning:/.test(l)).slice(-2).join('; ');
      const how = signal ? `signal ${signal}` : `exit code ${String(code)}`;
      finish({ kind: 'exited', detail: last ? `${how}: ${last}` : how });
      resolve(outcome!);
    });
  });
}
