// The volume controller: brings each volume to its spec (made, at its size, or gone) by sending one command
// to a host that reaches its pool: the owner of a local pool, any connected host for a shared one. A pass
// sends the command and returns; the answer writes the status and queues the next pass. Failures back off.
import type { Kysely } from 'kysely';
import type { Logger } from '../../lib/logger.ts';
import type { Command } from '../../protocol/messages.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import type { PoolService } from '../features/pools/service.ts';
import type { Database, PoolRow, VolumeRow, VolumeState } from '../store/schema.ts';
import type { Controller, RunningController } from './manager.ts';
import type { ReconcileResult } from './queue.ts';

/** Volume work is metadata (qemu-img create/resize, unlink): quick, but a slow NFS may take a while. */
const COMMAND_TIMEOUT_MS = 120_000;
const WAIT_FOR_HOST_MS = 2000;
/** Refusals that another try will not change; the volume is `failed` (and still retried, slowly). */
const PERMANENT = new Set(['VOLUME_INVALID', 'POOL_FULL', 'POOL_NOT_FOUND', 'IMAGE_INVALID']);

interface VolumeResult {
  volume?: { sizeMiB: number };
  pool?: { capacityMiB: number; freeMiB: number };
}

export interface VolumeControllerDeps {
  db: Kysely<Database>;
  registry: HostRegistry;
  pools: PoolService;
  log: Logger;
  resyncMs?: number;
  baseBackoffMs?: number;
}

type Op = 'create' | 'grow' | 'delete';

export function createVolumeController(deps: VolumeControllerDeps) {
  const { db, registry, pools, log } = deps;
  /** Volumes with a command out, so a pass in between does not send a second one. */
  const inflight = new Set<string>();
  const failures = new Map<string, number>();
  let handle: RunningController | undefined;

  /** Status is the controller's: written only if the spec did not change since it was read. */
  async function setStatus(v: VolumeRow, patch: { state?: VolumeState; message?: string | null; actual_size_mib?: number | null; observed_generation?: number; pool_id?: string }): Promise<boolean> {
    const row = await db.updateTable('volumes').set({ ...patch, updated_at: new Date().toISOString() })
      .where('id', '=', v.id).where('generation', '=', v.generation).returning('id').executeTakeFirst();
    return !!row;
  }

  function wanted(v: VolumeRow): Op | undefined {
    if (v.deleting) return 'delete';
    if (v.actual_size_mib === null) return 'create';
    if (v.actual_size_mib < v.size_mib) return 'grow';
    return undefined;
  }

  function command(op: Op, v: VolumeRow, pool: PoolRow): Command {
    const ref = { type: pool.type, path: pool.path };
    if (op === 'delete') return { op: 'volumeDelete', pool: ref, name: v.name };
    if (op === 'grow') return { op: 'volumeGrow', pool: ref, name: v.name, sizeMiB: v.size_mib };
    return {
      op: 'volumeCreate', pool: ref, name: v.name, format: v.format, sizeMiB: v.size_mib,
      ...(v.backing_path ? { backing: { path: v.backing_path, format: v.backing_format ?? 'qcow2' } } : {}),
    };
  }

  /** A host-local disk moves with its VM (the driver mirrors it): the row follows once the VM has arrived. */
  async function follow(v: VolumeRow, pool: PoolRow): Promise<boolean> {
    // A replicated disk moves only by a failover, which moves its row itself (storage/failover.ts).
    if (pool.type !== 'local' || !v.vm_id || v.deleting || v.replicated) return false;
    const vm = await db.selectFrom('vms').select(['host_id', 'target_host_id']).where('id', '=', v.vm_id).executeTakeFirst();
    if (!vm?.host_id || vm.target_host_id || vm.host_id === pool.host_id) return false;
    const there = await pools.localPoolOf(vm.host_id);
    if (!there) return false;
    await setStatus(v, { pool_id: there.id, message: null });
    return true;
  }

  async function reconcile(id: string): Promise<ReconcileResult> {
    if (inflight.has(id)) return; // its answer queues the next pass
    const v = await db.selectFrom('volumes').selectAll().where('id', '=', id).executeTakeFirst();
    if (!v) return;
    const pool = await db.selectFrom('pools').selectAll().where('id', '=', v.pool_id).executeTakeFirstOrThrow();
    if (await follow(v, pool)) return { requeueAfterMs: 0 };
    const op = wanted(v);
    if (!op) {
      if (v.state !== 'ready' || v.observed_generation !== v.generation || v.message) {
        await setStatus(v, { state: 'ready', observed_generation: v.generation, message: null });
      }
      return;
    }
    const [hostId] = pools.hostsFor(pool);
    const host = hostId ? registry.get(hostId) : undefined;
    if (!host?.connection) {
      const why = pool.type === 'local' ? `host ${pool.host_id} of pool ${pool.name} is not connected` : `no connected host reaches pool ${pool.name}`;
      if (v.message !== why) await setStatus(v, { message: why });
      return { requeueAfterMs: WAIT_FOR_HOST_MS };
    }
    const state: VolumeState = op === 'delete' ? 'deleting' : op === 'grow' ? 'growing' : v.state === 'failed' ? 'failed' : 'creating';
    if (v.state !== state && !(await setStatus(v, { state }))) return { requeueAfterMs: 0 };
    inflight.add(id);
    host.connection.command<VolumeResult>(command(op, v, pool), { timeoutMs: COMMAND_TIMEOUT_MS })
      .then((result) => answered(v, pool, op, result), (err: unknown) => refused(v, op, host.row.name, err))
      .catch((err: unknown) => log.error({ err, volumeId: id }, 'could not record a volume operation'))
      .finally(() => {
        inflight.delete(id);
        const n = failures.get(id) ?? 0;
        if (n === 0) handle?.enqueue(id);
        else handle?.enqueueAfter(id, Math.min((deps.baseBackoffMs ?? 200) * 2 ** (n - 1), 30_000));
      });
    return;
  }

  async function answered(v: VolumeRow, pool: PoolRow, op: Op, result: VolumeResult): Promise<void> {
    failures.delete(v.id);
    if (result?.pool) await pools.recordStats(pool.id, result.pool);
    if (op === 'delete') {
      await db.deleteFrom('volumes').where('id', '=', v.id).where('deleting', '=', 1).execute();
      log.info({ volumeId: v.id, pool: pool.name, name: v.name }, 'volume deleted');
      return;
    }
    const size = result?.volume?.sizeMiB ?? null;
    const done = size !== null && size >= v.size_mib;
    // A spec changed meanwhile (grown again) makes this write miss: the next pass looks again.
    await setStatus(v, { actual_size_mib: size, state: done ? 'ready' : v.state, message: null, ...(done ? { observed_generation: v.generation } : {}) });
  }

  async function refused(v: VolumeRow, op: Op, hostName: string, err: unknown): Promise<void> {
    const code = err instanceof CommandError ? err.code : 'AGENT_ERROR';
    const message = err instanceof Error ? err.message : String(err);
    if (code === 'HOST_DISCONNECTED') return; // another host, or this one back, on the next pass
    failures.set(v.id, (failures.get(v.id) ?? 0) + 1);
    log.warn({ volumeId: v.id, op, host: hostName, code, err: message }, 'volume operation failed');
    await setStatus(v, { message: `${op} failed on ${hostName}: ${message}`, ...(PERMANENT.has(code) && op !== 'delete' ? { state: 'failed' } : {}) });
  }

  const controller: Controller = {
    name: 'volumes',
    watches: ['volume'],
    reconcile,
    concurrency: 16,
    resyncMs: deps.resyncMs,
    listKeys: async () => (await db.selectFrom('volumes').select('id').execute()).map((r) => r.id),
  };
  return {
    controller,
    /** The manager's handle, so answers can queue the next pass. */
    attach(h: RunningController): void {
      handle = h;
    },
  };
}
