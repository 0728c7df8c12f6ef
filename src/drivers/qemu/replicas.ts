// Synchronous disk replicas: QEMU mirrors every write of a disk into an NBD export on another host
// (blockdev-mirror, sync=full, copy-mode=write-blocking) and reports the mirror job's state per disk.
//
// What a dead replica does to the guest (QEMU 7.2, block/mirror.c and block/nbd.c): in write-blocking mode a
// guest write completes once the local write and the copy to the target have both been tried; a failed copy
// does not fail the guest's write, it ends the job (on-target-error=report), so the VM goes on on its own disk.
// A copy to a peer that went away waits up to `reconnect-delay` seconds for it to come back, then fails. A
// peer that answers nothing at all (a partitioned host: no reset, no FIN) would hold writes until TCP gives up
// (minutes): the driver's watchdog yanks the connection of a replica whose NBD server stopped greeting new
// clients, so those writes too wait only reconnect-delay.
import { connect } from 'node:net';
import { DriverError, type DriverVmSpec, type ReplicaStatus, type ReplicaTarget } from '../types.ts';
import type { BlockJobInfo } from './qmp-commands.ts';
import type { QmpClient } from './qmp.ts';

export const replicaJobId = (disk: number) => `replica-mirror${disk}`;
export const replicaNode = (disk: number) => `replica-target${disk}`;
export const isReplicaJob = (id: unknown) => typeof id === 'string' && id.startsWith('replica-mirror');

export interface ReplicaOptions {
  /** How long a write waits for a replica that went away to come back before the replica is degraded. */
  reconnectDelayS: number;
}

export const sameTarget = (a: ReplicaTarget | undefined, b: ReplicaTarget | undefined) =>
  !!a && !!b && a.host === b.host && a.port === b.port && a.exportName === b.exportName;

export const replicaDisks = (spec: DriverVmSpec): number[] => spec.disks.flatMap((d, i) => (d.replica ? [i] : []));

export function checkTarget(target: ReplicaTarget): void {
  const ok = /^[A-Za-z0-9.:-]{1,255}$/.test(target.host) && Number.isInteger(target.port) && target.port > 0 && target.port < 65536
    && /^[A-Za-z0-9._-]{1,256}$/.test(target.exportName);
  if (!ok) throw new DriverError('REPLICA_FAILED', `bad replica target ${JSON.stringify(target)}`);
}

async function replicaJobs(qmp: QmpClient): Promise<BlockJobInfo[]> {
  return (await qmp.call('query-block-jobs', undefined)).filter((j) => isReplicaJob(j.device));
}

/** Starts mirroring disk `disk` into `target`; what an earlier mirror of that disk left is removed first. */
export async function startReplica(qmp: QmpClient, disk: number, target: ReplicaTarget, opts: ReplicaOptions): Promise<void> {
  checkTarget(target);
  await removeReplica(qmp, disk, opts);
  try {
    await qmp.call('blockdev-add', {
      driver: 'nbd', 'node-name': replicaNode(disk),
      server: { type: 'inet', host: target.host, port: String(target.port) },
      export: target.exportName,
      'reconnect-delay': opts.reconnectDelayS,
    });
  } catch (err) {
    throw new DriverError('REPLICA_FAILED', `connecting to replica ${target.host}:${target.port}/${target.exportName}: ${String(err)}`);
  }
  try {
    await qmp.call('blockdev-mirror', {
      'job-id': replicaJobId(disk), device: `disk${disk}`, target: replicaNode(disk),
      sync: 'full', 'copy-mode': 'write-blocking',
      // A failing replica ends the job; the guest's writes go on locally (see the module comment).
      'on-target-error': 'report', 'on-source-error': 'report',
      // A job that failed stays listed (concluded, with its error) until removed: a later driver sees it too.
      'auto-dismiss': false,
    });
  } catch (err) {
    await qmp.call('blockdev-del', { 'node-name': replicaNode(disk) }).catch(() => undefined);
    throw new DriverError('REPLICA_FAILED', `mirroring disk ${disk}: ${String(err)}`);
  }
}

/**
 * Ends the mirror of disk `disk` (a ready mirror cancelled completes without switching the VM's disk over)
 * and removes its NBD node. Bounded: in-flight copies to a peer that answers nothing are yanked.
 */
export async function removeReplica(qmp: QmpClient, disk: number, opts: ReplicaOptions): Promise<void> {
  const id = replicaJobId(disk);
  const job = async () => (await replicaJobs(qmp).catch(() => [])).find((j) => j.device === id);
  const ended = async (timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const j = await job();
      if (!j || j.status === 'concluded' || j.status === 'null') return true;
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const now = await job();
  if (now && now.status !== 'concluded' && now.status !== 'null') {
    await qmp.call('block-job-cancel', { device: id }).catch(() => undefined);
    if (!(await ended(opts.reconnectDelayS * 1000 + 10_000))) {
      await yankReplica(qmp, disk);
      await qmp.call('block-job-cancel', { device: id, force: true }).catch(() => undefined);
      await ended(10_000);
    }
  }
  if (await job()) await qmp.call('job-dismiss', { id }).catch(() => undefined);
  await qmp.call('blockdev-del', { 'node-name': replicaNode(disk) }).catch(() => undefined);
}

/** Cuts the NBD connection of disk `disk`'s replica: its requests then fail after the reconnect delay. */
export async function yankReplica(qmp: QmpClient, disk: number): Promise<void> {
  await qmp.call('yank', { instances: [{ type: 'block-node', 'node-name': replicaNode(disk) }] }).catch(() => undefined);
}

/** The replica state of every disk of `spec` that has a target, from QEMU's jobs and the starts that failed. */
export async function replicaStatuses(qmp: QmpClient, spec: DriverVmSpec, failures: Map<number, string>): Promise<ReplicaStatus[]> {
  const jobs = await replicaJobs(qmp);
  return replicaDisks(spec).map((disk) => statusOf(disk, spec.disks[disk]!.replica!, jobs.find((j) => j.device === replicaJobId(disk)), failures.get(disk)));
}

function statusOf(disk: number, target: ReplicaTarget, job: BlockJobInfo | undefined, failure: string | undefined): ReplicaStatus {
  const base = { disk, target };
  if (!job) return { ...base, state: 'degraded', reason: failure ?? 'not mirroring' };
  if (job.error || ['aborting', 'concluded', 'null', 'undefined'].includes(job.status)) {
    return { ...base, state: 'degraded', reason: job.error ?? `the mirror ended (${job.status})` };
  }
  if (job.ready) return { ...base, state: 'synced' };
  return { ...base, state: 'rebuilding', copiedBytes: job.offset, totalBytes: job.len };
}

/**
 * Whether the replica's NBD server greets a new client within `timeoutMs`. A TCP connect alone is not
 * enough: the kernel of a host whose daemon hangs still accepts it; a live server says NBDMAGIC at once.
 */
export function reachable(target: ReplicaTarget, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: target.host, port: target.port });
    let got = Buffer.alloc(0);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 8) done(got.subarray(0, 8).toString('latin1') === 'NBDMAGIC');
    });
    s.once('error', () => done(false));
    s.once('close', () => done(false));
  });
}
