// Shared by the QEMU tests: finds QEMU and the test guest (building it when missing), temp dirs, pid cleanup.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach } from 'node:test';
import type { DriverVmSpec, HypervisorDriver } from '../types.ts';
import { killMentioning } from '../../../test/support/processes.ts';

const repo = join(import.meta.dirname, '..', '..', '..');
const INSTALL_HINT =
  'install it with `apt-get install qemu-system-x86 qemu-utils busybox-static cpio` and build the guest with `npm run build-guest`';

export interface TestGuest {
  kernelPath: string;
  initrdPath: string;
  cmdline: string;
}

/** Throws (never skips) when QEMU is missing, so a machine without it fails loudly with the fix. */
export function requireQemu(): void {
  for (const bin of ['qemu-system-x86_64', 'qemu-img']) {
    const found = spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
    if (!found) throw new Error(`${bin} is not installed: ${INSTALL_HINT}`);
  }
}

let guest: TestGuest | undefined;

/** The cached test guest; built on first use (the script does nothing when it is already built). */
export function requireGuest(): TestGuest {
  requireQemu();
  if (guest) return guest;
  const dir = process.env.AWAN_GUEST_DIR ?? join(repo, '.cache', 'guest');
  const meta = join(dir, 'guest.json');
  {
    // The script returns at once when the cached guest is current, and rebuilds an outdated one.
    try {
      execFileSync('bash', [join(repo, 'scripts', 'build-guest')], { stdio: 'pipe', env: { ...process.env, AWAN_GUEST_DIR: dir } });
    } catch (err) {
      throw new Error(`the test guest could not be built (${String(err)}): ${INSTALL_HINT}`);
    }
  }
  const parsed: unknown = JSON.parse(readFileSync(meta, 'utf8'));
  if (typeof parsed !== 'object' || parsed === null) throw new Error(`${meta} is not an object`);
  const g = parsed as Record<string, unknown>;
  if (typeof g.kernelPath !== 'string' || typeof g.initrdPath !== 'string' || typeof g.cmdline !== 'string') {
    throw new Error(`${meta} lacks kernelPath/initrdPath/cmdline: rebuild with \`npm run build-guest -- --force\``);
  }
  guest = { kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: g.cmdline };
  return guest;
}

export function tempDir(prefix: string): { path: string; remove: () => void } {
  // Short paths: unix socket paths are limited to 108 bytes.
  const path = mkdtempSync(join(tmpdir(), `awan-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Kills every QEMU whose command line mentions `marker` (a test's own temp dir): by pid, with SIGKILL. */
export const killProcessesMentioning = (marker: string): number[] => killMentioning(marker, 'qemu');

/** A small VM booting the test guest: 256 MiB with room to grow to 512 MiB, one user-mode NIC. */
export function guestSpec(id: string, overrides: Partial<DriverVmSpec> = {}): DriverVmSpec {
  const g = requireGuest();
  const mac = `52:54:00:${randomBytes(3).toString('hex').match(/../g)?.join(':') ?? '00:00:01'}`;
  return {
    id,
    name: id,
    cpus: 1,
    memoryMiB: 256,
    maxMemoryMiB: 512,
    boot: { kind: 'kernel', kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: g.cmdline },
    disks: [],
    nics: [{ mode: 'user', mac }],
    ...overrides,
  };
}

/** The guest prints its memory every second; the last report in the console text, in MiB. */
export function lastGuestMemory(consoleText: string): { totalMiB: number; freeMiB: number } | undefined {
  const all = [...consoleText.matchAll(/AWAN-MEM total=(\d+)KiB free=(\d+)KiB/g)];
  const last = all.at(-1);
  return last ? { totalMiB: Number(last[1]) / 1024, freeMiB: Number(last[2]) / 1024 } : undefined;
}

/** The guest prints its uptime every second: the last complete report in the console text, in seconds. */
export function lastGuestUptime(consoleText: string): number | undefined {
  const last = [...consoleText.matchAll(/AWAN-UPTIME (\d+(?:\.\d+)?)\r?\n/g)].at(-1);
  return last ? Number(last[1]) : undefined;
}

/**
 * The drivers a test file opens: after each test their VMs are deleted and they are closed, and any QEMU
 * left under `root` is killed; after the file, `root` goes too.
 */
export function trackDrivers(root: { path: string; remove: () => void }): Set<HypervisorDriver> {
  const drivers = new Set<HypervisorDriver>();
  afterEach(async () => {
    for (const d of drivers) {
      for (const vm of await d.list().catch(() => [])) await d.delete(vm.id).catch(() => undefined);
      await d.close();
    }
    drivers.clear();
    killProcessesMentioning(root.path);
  });
  after(() => {
    killProcessesMentioning(root.path);
    root.remove();
  });
  return drivers;
}
