// NIC backends: user-mode networking, or a tap device this driver creates and enslaves to a Linux bridge.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { DriverError, type NicSpec } from '../types.ts';
import type { NicBackend } from './args.ts';

const run = promisify(execFile);

/** Interface names are at most 15 bytes: derive a stable one from who owns the VM and which NIC it is. */
export function tapName(owner: string, vmId: string, index: number): string {
  const hash = createHash('sha256').update(`${owner}\0${vmId}\0${index}`).digest('hex').slice(0, 10);
  return `awt${hash}`;
}

export function bridgeExists(bridge: string): boolean {
  return existsSync(`/sys/class/net/${bridge}/bridge`);
}

async function ip(args: string[]): Promise<void> {
  try {
    await run('ip', args);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new DriverError('INTERNAL', `ip ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

/**
 * Resolves each NIC to a backend. Bridge mode needs the bridge on this host; without it the NIC falls back
 * to user mode so the VM still boots (and `warnings` says so), since hosts in one cluster may differ.
 */
export async function setUpNics(
  owner: string,
  vmId: string,
  nics: NicSpec[],
): Promise<{ backends: NicBackend[]; warnings: string[] }> {
  const backends: NicBackend[] = [];
  const warnings: string[] = [];
  for (const [i, nic] of nics.entries()) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(nic.mac)) {
      throw new DriverError('BOOT_FAILED', `${vmId}: NIC ${i} has an invalid MAC ${JSON.stringify(nic.mac)}`);
    }
    if (nic.mode === 'bridge' && nic.bridge && bridgeExists(nic.bridge)) {
      const ifname = tapName(owner, vmId, i);
      if (!existsSync(`/sys/class/net/${ifname}`)) await ip(['tuntap', 'add', 'dev', ifname, 'mode', 'tap']);
      await ip(['link', 'set', ifname, 'master', nic.bridge]);
      await ip(['link', 'set', ifname, 'up']);
      backends.push({ kind: 'tap', ifname, mac: nic.mac });
    } else {
      if (nic.mode === 'bridge') warnings.push(`bridge ${nic.bridge ?? '(none)'} not found; NIC ${i} uses user-mode networking`);
      backends.push({ kind: 'user', mac: nic.mac });
    }
  }
  return { backends, warnings };
}

/** Removes the taps of a VM that no longer runs here; missing ones are fine. */
export async function tearDownNics(owner: string, vmId: string, nics: NicSpec[]): Promise<void> {
  for (const i of nics.keys()) {
    const ifname = tapName(owner, vmId, i);
    if (existsSync(`/sys/class/net/${ifname}`)) await ip(['link', 'del', ifname]).catch(() => undefined);
  }
}
