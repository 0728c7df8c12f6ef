// Live migration over QMP: the source side (migrate, progress, cancel) and a free port for the destination.
import { createServer } from 'node:net';
import { DriverError, type MigrationProgress, type MigrationResult } from '../types.ts';
import type { MigrationInfo } from './qmp-commands.ts';
import type { QmpClient } from './qmp.ts';

const MiB = 1024 * 1024;

/** A TCP port free on `address` right now (QEMU binds it a moment later; callers retry on a clash). */
export function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, address, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('no port'))));
    });
  });
}

/** Only a TCP URI this driver could have produced is accepted: it goes straight into a QMP command. */
export function checkMigrationUri(uri: string): string {
  if (!/^tcp:(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(uri)) {
    throw new DriverError('MIGRATION_FAILED', `unsupported migration target ${JSON.stringify(uri)}`);
  }
  return uri;
}

export interface MigrateOptions {
  /** Bytes per second QEMU may use; its own default (32 MiB/s in 7.2) makes even small guests slow. */
  maxBandwidthBytes: number;
  /** Pause QEMU allows at switchover. */
  downtimeLimitMs: number;
  /**
   * Pause the guest for the whole copy instead of copying while it runs. Safe where the dirty tracking a live
   * copy relies on cannot be trusted (TCG); the guest is then paused for the whole time the copy takes.
   */
  paused: boolean;
  pollIntervalMs: number;
  onProgress?: (p: MigrationProgress) => void;
  signal?: AbortSignal;
}

function progressOf(info: MigrationInfo, last: number): MigrationProgress {
  const ram = info.ram ?? { transferred: 0, remaining: 0, total: 0 };
  let fraction = info.status === 'completed' ? 1 : ram.total > 0 ? 1 - ram.remaining / ram.total : 0;
  // Dirty pages can make "remaining" grow again; progress shown to people must not go backwards.
  fraction = Math.min(1, Math.max(last, fraction, 0));
  return { fraction, transferredMiB: ram.transferred / MiB, remainingMiB: ram.remaining / MiB };
}

const FAILED = new Set(['failed', 'cancelled']);

/**
 * Sends the VM to `uri` and waits for the outcome. On success the source QEMU is paused ('postmigrate') and
 * the caller retires it; on failure or abort the guest runs here again (QEMU resumes a live copy by itself,
 * a paused one is resumed here). The destination starts the guest as soon as it has it, in both modes
 * (see `-global migration.store-global-state=off` in args.ts).
 */
export async function runMigration(qmp: QmpClient, uri: string, opts: MigrateOptions): Promise<MigrationResult> {
  checkMigrationUri(uri);
  if (opts.signal?.aborted) throw new DriverError('MIGRATION_FAILED', 'migration aborted before it started');
  const before = await qmp.call('query-migrate', undefined);
  if (before.status === 'active' || before.status === 'setup' || before.status === 'cancelling') {
    throw new DriverError('MIGRATION_FAILED', `a migration is already ${before.status}`);
  }
  await qmp.call('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      // Throttles a guest that dirties memory faster than the link carries it, so the migration converges.
      { capability: 'auto-converge', state: true },
    ],
  });
  await qmp.call('migrate-set-parameters', {
    'max-bandwidth': opts.maxBandwidthBytes,
    'downtime-limit': opts.downtimeLimitMs,
  });
  let aborted = false;
  let started = false;
  const cancel = (): void => void qmp.call('migrate_cancel', undefined).catch(() => undefined);
  // QMP runs commands in order: a cancel sent before `migrate` would be a no-op and the migration would run.
  const onAbort = (): void => {
    aborted = true;
    if (started) cancel();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let last = 0;
  /** When the guest was paused before the copy: its downtime is then everything from here to the end. */
  let pausedAtMs: number | undefined;
  let startedAtMs = 0;
  const result = (info: MigrationInfo): MigrationResult => resultOf(info, pausedAtMs === undefined ? undefined : startedAtMs - pausedAtMs);
  try {
    if (opts.signal?.aborted) throw new DriverError('MIGRATION_FAILED', 'migration aborted before it started');
    if (opts.paused) {
      pausedAtMs = performance.now();
      await qmp.call('stop', undefined);
    }
    startedAtMs = performance.now();
    await qmp.call('migrate', { uri });
    started = true;
    if (aborted) cancel();
    for (;;) {
      const info = await qmp.call('query-migrate', undefined);
      if (info.status === 'completed') {
        opts.onProgress?.(progressOf(info, last));
        return result(await withTimes(qmp, info));
      }
      if (FAILED.has(info.status)) {
        const why = aborted ? 'migration aborted' : `migration ${info.status}${info.errorDesc ? `: ${info.errorDesc}` : ''}`;
        throw new DriverError('MIGRATION_FAILED', why);
      }
      if (info.ram) {
        const p = progressOf(info, last);
        last = p.fraction;
        opts.onProgress?.(p);
      }
      await new Promise((r) => setTimeout(r, opts.pollIntervalMs));
    }
  } catch (err) {
    // A lost answer does not mean a lost migration: if it completed, the guest now runs there, never here too.
    const settled = await settle(qmp);
    if (settled?.status === 'completed') return result(await withTimes(qmp, settled));
    // QEMU resumes only a guest that ran when the migration began; the one paused for the copy is ours to resume.
    if (pausedAtMs !== undefined) await qmp.call('cont', undefined).catch(() => undefined);
    if (err instanceof DriverError) throw err;
    throw new DriverError('MIGRATION_FAILED', aborted ? 'migration aborted' : `migration failed: ${String(err)}`);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * A live copy's downtime is QEMU's own figure (the final pause). A paused copy's is the whole copy plus the
 * moment between pausing the guest and starting the migration, which QEMU's total time does not include.
 */
function resultOf(info: MigrationInfo, pausedBeforeMs: number | undefined): MigrationResult {
  const totalMs = info.totalTimeMs ?? 0;
  if (pausedBeforeMs === undefined) return { mode: 'live', totalMs, downtimeMs: Math.min(info.downtimeMs ?? 0, totalMs) };
  const downtimeMs = Math.round(totalMs + pausedBeforeMs);
  return { mode: 'paused', totalMs: downtimeMs, downtimeMs };
}

/** QEMU 7.2 reports 'completed' a moment before it fills in total-time and downtime: ask again briefly. */
async function withTimes(qmp: QmpClient, info: MigrationInfo): Promise<MigrationInfo> {
  for (let i = 0; i < 40 && !info.totalTimeMs; i++) {
    await new Promise((r) => setTimeout(r, 25));
    const again = await qmp.call('query-migrate', undefined).catch(() => undefined);
    if (again?.status === 'completed') info = again;
  }
  return info;
}

/** Waits for a migration to reach a final state; QEMU itself resumes the guest after a failure or cancel. */
async function settle(qmp: QmpClient): Promise<MigrationInfo | undefined> {
  for (let i = 0; i < 200 && !qmp.closed; i++) {
    const info = await qmp.call('query-migrate', undefined).catch(() => undefined);
    if (info && !['active', 'setup', 'cancelling', 'device', 'pre-switchover', 'wait-unplug'].includes(info.status)) return info;
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}
