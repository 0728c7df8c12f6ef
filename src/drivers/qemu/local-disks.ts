// Disks that live on one host only: where they are, and how a live migration carries them along (the
// destination exports its fresh overlay over NBD, the source mirrors its top layer into it before the RAM
// moves, and the mirror ends once the source is paused).
import { existsSync, mkdirSync, readdirSync, renameSync, rmdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { DriverError, type DriverVmSpec } from '../types.ts';
import { freePort } from './migrate.ts';
import type { QmpClient } from './qmp.ts';

const MIRROR_READY_TIMEOUT_MS = 10 * 60_000;

export const localPool = (dataDir: string) => join(dataDir, 'local-pool');

/**
 * Earlier releases kept local disks in the driver's own data dir while the agent's pool (which makes, grows
 * and deletes them for control) was elsewhere: each disk there moves to the pool, replacing the blank one
 * the pool may have made in its place. A running QEMU keeps its open file. Returns the files moved.
 */
export function moveLocalDisks(from: string, to: string): string[] {
  if (from === to || !existsSync(from)) return [];
  const moved: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(join(from, rel), { withFileTypes: true })) {
      const path = join(rel, e.name);
      if (e.isDirectory()) walk(path);
      else {
        mkdirSync(dirname(join(to, path)), { recursive: true });
        renameSync(join(from, path), join(to, path));
        moved.push(path);
      }
    }
    try {
      rmdirSync(join(from, rel));
    } catch {
      // something new appeared meanwhile: left where it is
    }
  };
  walk('');
  return moved;
}

export const hasLocalDisks = (spec: DriverVmSpec) => spec.disks.some((d) => d.local);
/** Local disks that travel with a migration: all but the copies the destination already serves (`replicaHere`). */
export const hasDisksToCopy = (spec: DriverVmSpec) => spec.disks.some((d) => d.local && !d.replicaHere);
export const takesOverCopies = (spec: DriverVmSpec) => spec.disks.some((d) => d.replicaHere);

/**
 * The spec a migration copies disks for: with `viaReplica`, disks that have a replica are left out (the
 * destination takes their copies over); indexes stay, QEMU's node names are by index.
 */
export function disksToSend(spec: DriverVmSpec, viaReplica: boolean): DriverVmSpec {
  if (!viaReplica) return spec;
  return { ...spec, disks: spec.disks.map((d) => (d.replica ? { ...d, local: false } : d)) };
}

/** The spec with local disk paths made absolute under this host's pool; a path that escapes it is refused. */
export function resolveLocalDisks(spec: DriverVmSpec, pool: string): DriverVmSpec {
  if (!hasLocalDisks(spec)) return spec;
  return {
    ...spec,
    disks: spec.disks.map((d) => {
      if (!d.local || d.path.startsWith(`${pool}/`)) return d;
      const rel = normalize(d.path);
      if (isAbsolute(rel) || rel.startsWith('..')) throw new DriverError('IMAGE_INVALID', `local disk path ${d.path} must stay inside the host's pool`);
      return { ...d, path: join(pool, rel) };
    }),
  };
}

/** The local disks a migration copies (a copy the destination takes over is not one). */
const localIndexes = (spec: DriverVmSpec) => spec.disks.flatMap((d, i) => (d.local && !d.replicaHere ? [i] : []));

/** Destination: serve the incoming VM's local disks over NBD; returns host:port. */
export async function exportLocalDisks(qmp: QmpClient, spec: DriverVmSpec, address: string): Promise<string> {
  const port = await freePort(address);
  await qmp.call('nbd-server-start', { addr: { type: 'inet', data: { host: address, port: String(port) } } });
  for (const i of localIndexes(spec)) {
    await qmp.call('block-export-add', { type: 'nbd', id: `migrate-disk${i}`, 'node-name': `disk${i}`, name: `disk${i}`, writable: true });
  }
  return `${address}:${port}`;
}

/** Destination, once the VM runs: nobody writes through NBD any more. */
export async function stopExports(qmp: QmpClient): Promise<void> {
  await qmp.call('nbd-server-stop', undefined).catch(() => undefined);
}

/**
 * Source: mirror every local disk into the destination's export and wait until each mirror is in step.
 * Returns `finish`, to call once the RAM has moved (source paused) or the migration failed.
 */
export async function mirrorLocalDisks(qmp: QmpClient, spec: DriverVmSpec, nbd: string, signal?: AbortSignal): Promise<() => Promise<void>> {
  const colon = nbd.lastIndexOf(':');
  const host = nbd.slice(0, colon);
  const port = nbd.slice(colon + 1);
  if (!host || !/^\d+$/.test(port)) throw new DriverError('MIGRATION_FAILED', `bad NBD address ${nbd}`);
  const started: number[] = [];
  const finish = async () => {
    for (const i of started) {
      // A ready mirror cancelled while the guest is paused completes without switching disks.
      await qmp.call('block-job-cancel', { device: `migrate-mirror${i}` }).catch(() => undefined);
    }
    const mirrors = async () => (await qmp.call('query-block-jobs', undefined).catch(() => [])).filter((j) => j.device.startsWith('migrate-mirror'));
    for (let n = 0; n < 100 && (await mirrors()).length > 0; n++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const i of started) await qmp.call('blockdev-del', { 'node-name': `migrate-target${i}` }).catch(() => undefined);
  };
  try {
    for (const i of localIndexes(spec)) {
      await qmp.call('blockdev-add', { driver: 'nbd', 'node-name': `migrate-target${i}`, server: { type: 'inet', host, port }, export: `disk${i}` });
      // Only the top layer: the destination's overlay sits on the same shared image.
      await qmp.call('blockdev-mirror', { 'job-id': `migrate-mirror${i}`, device: `disk${i}`, target: `migrate-target${i}`, sync: 'top' });
      started.push(i);
    }
    const deadline = Date.now() + MIRROR_READY_TIMEOUT_MS;
    for (;;) {
      if (signal?.aborted) throw new DriverError('MIGRATION_FAILED', 'migration cancelled while copying disks');
      const jobs = await qmp.call('query-block-jobs', undefined);
      const mine = jobs.filter((j) => j.device.startsWith('migrate-mirror'));
      if (mine.length < started.length) throw new DriverError('MIGRATION_FAILED', 'a disk mirror stopped before it was in step');
      if (mine.every((j) => j.ready)) return finish;
      if (Date.now() > deadline) throw new DriverError('MIGRATION_FAILED', 'disk mirror did not get in step in time');
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await finish();
    throw err instanceof DriverError ? err : new DriverError('MIGRATION_FAILED', `copying local disks: ${String(err)}`);
  }
}

/** Local disks belong to the VM on this host: they go when it goes. A copy it was to take over stays: its server owns it. */
export async function removeLocalDisks(spec: DriverVmSpec): Promise<void> {
  for (const d of spec.disks) if (d.local && !d.replicaHere) await rm(d.path, { force: true });
}
