// The agent's side of the host lease: it learns from control until when the host may run its HA VMs,
// keeps that (and each VM's placement token) on disk for the watchdog, and refuses commands about a VM
// that carry an older token than one it has seen. When the lease runs out it stops the HA VMs itself;
// for drivers whose VMs are processes (QEMU) a watchdog process does so too, in case this one cannot.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HypervisorDriver } from '../../drivers/types.ts';
import type { Logger } from '../../lib/logger.ts';
import {
  type Placement, clearFenced, isFenced, markFenced, monotonicMs, readLease, readPlacements, watchdogPidFile, writeLease, writePlacements,
} from './state.ts';

const CHECK_MS = 100;

export class StaleToken extends Error {
  readonly code = 'STALE_TOKEN';
}

export class LeaseKeeper {
  private validUntilMs: number;
  private readonly placements: Record<string, Placement>;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly dataDir: string,
    private readonly driver: HypervisorDriver,
    private readonly log: Logger,
    /** Called for each VM this host stopped because its lease ran out. */
    private readonly onFenced: (vmId: string) => void,
  ) {
    this.validUntilMs = readLease(dataDir);
    this.placements = readPlacements(dataDir);
  }

  start(): void {
    this.timer = setInterval(() => void this.fenceIfExpired(), CHECK_MS);
    this.timer.unref();
    if (Object.values(this.placements).some((p) => p.ha)) this.ensureWatchdog();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Control renewed the lease for `ttlMs`, counted from `sentAtMs` (monotonic), when the agent asked. */
  renewed(sentAtMs: number, ttlMs: number): void {
    const until = sentAtMs + ttlMs;
    if (until <= this.validUntilMs) return;
    this.validUntilMs = until;
    writeLease(this.dataDir, until);
  }

  get expired(): boolean {
    return monotonicMs() > this.validUntilMs;
  }

  tokenOf(vmId: string): number | undefined {
    return this.placements[vmId]?.token;
  }

  /** A command about a VM: refused when it carries an older token than this host has seen. */
  checkToken(vmId: string, token: number | undefined): void {
    const seen = this.placements[vmId]?.token;
    if (token !== undefined && seen !== undefined && token < seen) {
      throw new StaleToken(`command for VM ${vmId} carries placement token ${token}; this host has seen ${seen}`);
    }
  }

  /** Recorded before the VM starts here, so the watchdog knows of it even if the agent hangs right after. */
  place(vmId: string, token: number | undefined, ha: boolean): void {
    this.checkToken(vmId, token);
    const pidFile = this.driver.pidFile?.(vmId);
    this.placements[vmId] = { token: token ?? this.placements[vmId]?.token ?? 0, ha, ...(pidFile ? { pidFile } : {}) };
    writePlacements(this.dataDir, this.placements);
    clearFenced(this.dataDir, vmId);
    if (ha) this.ensureWatchdog();
  }

  forget(vmId: string): void {
    if (!(vmId in this.placements)) return;
    delete this.placements[vmId];
    writePlacements(this.dataDir, this.placements);
    clearFenced(this.dataDir, vmId);
  }

  fenced(vmId: string): boolean {
    return isFenced(this.dataDir, vmId);
  }

  private fencing = false;

  private async fenceIfExpired(): Promise<void> {
    if (this.fencing || !this.expired) return;
    this.fencing = true;
    try {
      const up = (await this.driver.list()).filter((v) => this.placements[v.id]?.ha && ['running', 'starting', 'paused'].includes(v.state));
      for (const vm of up) {
        const why = `the host's lease ran out ${monotonicMs() - this.validUntilMs} ms ago; stopped by the host`;
        markFenced(this.dataDir, vm.id, why);
        this.log.warn({ vmId: vm.id }, 'lease ran out: stopping an HA VM');
        await this.driver.stop(vm.id, { force: true }).catch((err: unknown) => this.log.error({ err, vmId: vm.id }, 'could not stop an HA VM whose lease ran out'));
        this.onFenced(vm.id);
      }
    } catch (err) {
      this.log.error({ err }, 'self-fencing check failed');
    } finally {
      this.fencing = false;
    }
  }

  /** Starts the watchdog process unless one runs for this data dir. */
  private ensureWatchdog(): void {
    if (!this.driver.pidFile) return;
    try {
      const pid = Number(readFileSync(watchdogPidFile(this.dataDir), 'utf8').trim());
      if (pid > 1 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('watchdog')) return;
    } catch {
      // none yet
    }
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), join(import.meta.dirname, 'watchdog.ts'), this.dataDir], {
      detached: true, stdio: 'ignore',
    });
    child.unref();
    this.log.info({ pid: child.pid }, 'started the self-fencing watchdog');
  }
}
