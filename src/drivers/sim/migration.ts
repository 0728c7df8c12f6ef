// Outgoing live migration in the simulator: takes time in proportion to memory, reports progress, can be cancelled.
import { DriverError, type MigrationProgress, type MigrationResult, type MigrationTarget } from '../types.ts';
import type { SimClock, TimerSet } from './clock.ts';
import type { SimVm } from './vm.ts';

/** Progress is reported about this often; real drivers poll QEMU at a similar pace. */
const PROGRESS_INTERVAL_MS = 50;
const MAX_PROGRESS_STEPS = 100;
/** Dirty memory sent while the guest is paused at the end; sets the simulated downtime. */
const FINAL_DIRTY_MiB = 4;

export interface MigrationContext {
  address: string;
  /** Names this driver instance in its migration URIs: hosts on one machine share an address, never this. */
  instanceId: string;
  hostname: string;
  migrateMiBPerS: number;
  clock: SimClock;
  timers: TimerSet;
  /** Called once everything is sent: the VM no longer runs on this host. */
  departed(vm: SimVm): void;
}

/**
 * `sim://ADDRESS/INSTANCE/VM`: the address is what a real driver would dial; the instance tells apart hosts
 * that share it (the demo's hosts, a lab box with several agents), so only it decides "this is me".
 */
export function migrationUri(ctx: Pick<MigrationContext, 'address' | 'instanceId'>, vmId: string): string {
  return `sim://${ctx.address}/${encodeURIComponent(ctx.instanceId)}/${encodeURIComponent(vmId)}`;
}

function checkTarget(ctx: MigrationContext, vmId: string, target: MigrationTarget): void {
  const match = /^sim:\/\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(target.uri);
  if (!match) throw new DriverError('MIGRATION_FAILED', `not a sim migration target: ${target.uri}`);
  if (decodeURIComponent(match[3]) !== vmId) {
    throw new DriverError('MIGRATION_FAILED', `target ${target.uri} was prepared for another VM than ${vmId}`);
  }
  if (decodeURIComponent(match[2]) === ctx.instanceId) {
    throw new DriverError('MIGRATION_FAILED', `target ${target.uri} was prepared on this host (${ctx.hostname})`);
  }
}

export function runMigration(
  ctx: MigrationContext,
  vm: SimVm,
  target: MigrationTarget,
  onProgress?: (p: MigrationProgress) => void,
  signal?: AbortSignal,
): Promise<MigrationResult> {
  const vmId = vm.spec.id;
  if (vm.migration) throw new DriverError('MIGRATION_FAILED', `${vmId} is already migrating`);
  checkTarget(ctx, vmId, target);
  if (signal?.aborted) throw new DriverError('MIGRATION_FAILED', `migration of ${vmId} cancelled`);

  const totalMiB = vm.actualMiB;
  const durationMs = (totalMiB / ctx.migrateMiBPerS) * 1000;
  const steps = Math.min(MAX_PROGRESS_STEPS, Math.max(1, Math.ceil(durationMs / PROGRESS_INTERVAL_MS)));
  const stepMs = durationMs / steps;
  const startedAt = ctx.clock.now();

  return new Promise<MigrationResult>((resolve, reject) => {
    let step = 0;
    let settled = false;
    let cancelTimer = (): void => undefined;
    const settle = (): void => {
      settled = true;
      vm.migration = undefined;
      signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = (): void => {
      if (settled) return;
      cancelTimer();
      settle();
      reject(new DriverError('MIGRATION_FAILED', `migration of ${vmId} cancelled`));
    };
    const tick = (): void => {
      step += 1;
      const fraction = step / steps;
      const transferredMiB = Math.round(totalMiB * fraction);
      try {
        onProgress?.({ fraction, transferredMiB, remainingMiB: totalMiB - transferredMiB });
      } catch {
        // A failing progress listener is the caller's problem; the migration itself goes on.
      }
      // The listener may have aborted the migration, or the VM may have been stopped meanwhile.
      if (settled) return;
      if (step < steps) {
        cancelTimer = ctx.timers.after(stepMs, tick);
        return;
      }
      settle();
      ctx.departed(vm);
      resolve({
        mode: 'live',
        totalMs: ctx.clock.now() - startedAt,
        downtimeMs: Math.round((Math.min(FINAL_DIRTY_MiB, totalMiB) / ctx.migrateMiBPerS) * 1000),
      });
    };
    vm.migration = {
      cancel(err) {
        if (settled) return;
        cancelTimer();
        settle();
        reject(err);
      },
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    cancelTimer = ctx.timers.after(stepMs, tick);
  });
}
