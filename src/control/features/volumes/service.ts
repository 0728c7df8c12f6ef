// Volumes as control keeps them: rows in SQL whose spec the API and the VM code set (create with the VM's
// first boot, grow, delete with the VM) and whose status the volume controller brings in from agents.
// Nothing here touches a pool's files; paths are only named.
import { join } from 'node:path';
import type { Kysely } from 'kysely';
import { newId } from '../../../lib/ids.ts';
import type { ReplicaTargetMsg as ReplicaTarget, VmSpecMsg } from '../../../protocol/messages.ts';
import { AppError, notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { Database, ImageRow, PoolRow, VmRow, VolumeRow } from '../../store/schema.ts';
import type { PoolService } from '../pools/service.ts';
import { DEFAULT_POOL } from '../pools/service.ts';
import { type Volume, volumeFromRow } from './model.ts';

export interface ListVolumes {
  limit: number;
  cursor?: string;
  poolId?: string;
  vmId?: string;
}

/** The replica status of a volume that has no copy (yet). */
export const noReplica = { replica_host_id: null, replica_state: null, replica_message: null, replica_target: null, replica_changed_at: null, replica_token: null } as const;

/** A VM's first disk, in whichever pool it lives. */
export const vmDiskName = (vmId: string) => `vms/${vmId}/disk0.qcow2`;

export type Volumes = ReturnType<typeof createVolumes>;

export function createVolumes({ db, pools, changes }: { db: Kysely<Database>; pools: PoolService; changes: ChangeFeed }) {
  const touched = (id: string) => changes.publish({ kind: 'volume', id });

  async function find(id: string): Promise<VolumeRow> {
    const row = await db.selectFrom('volumes').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw notFound('VOLUME_NOT_FOUND', 'volume', id);
    return row;
  }

  const diskOf = (vmId: string) => db.selectFrom('volumes').selectAll().where('vm_id', '=', vmId).where('deleting', '=', 0).orderBy('created_at').executeTakeFirst();

  async function poolFor(vm: VmRow): Promise<PoolRow> {
    if (!vm.local_disk) return pools.find(DEFAULT_POOL);
    const pool = vm.host_id ? await pools.localPoolOf(vm.host_id) : undefined;
    if (!pool) throw new AppError('HOST_NOT_READY', `the host of VM ${vm.name} has not reported its local pool yet`);
    return pool;
  }

  return {
    find,
    async get(id: string): Promise<Volume> {
      return volumeFromRow(await find(id));
    },

    async list(q: ListVolumes): Promise<{ items: Volume[]; nextCursor: string | null }> {
      const c = decodeCursor(q.cursor);
      let query = db.selectFrom('volumes').selectAll().orderBy('created_at').orderBy('id').limit(q.limit + 1);
      if (c) query = query.where((eb) => eb.or([eb('created_at', '>', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '>', c.id)])]));
      if (q.poolId) query = query.where('pool_id', '=', q.poolId);
      if (q.vmId) query = query.where('vm_id', '=', q.vmId);
      const rows = (await query.execute()).map(volumeFromRow);
      return page(rows, q.limit, (v) => ({ at: v.createdAt, id: v.id }));
    },

    /**
     * The disks of a VM about to start (or arrive by migration), recorded as volumes the first time: the row
     * is the source of truth from then on. The host's driver makes a missing disk at boot from the same
     * spec, and the volume controller makes it through the pool, whichever comes first; both keep an existing one.
     */
    async diskSpecs(vm: VmRow, image: ImageRow | undefined): Promise<VmSpecMsg['disks']> {
      if (!image || (image.format === 'kernel' && vm.disk_gib === 0)) return [];
      // A kernel-booted VM's disk is a blank data disk; any other starts as a copy-on-write of its image.
      const backing = image.format === 'kernel' ? undefined : { path: image.path, format: image.format };
      const sizeMiB = vm.disk_gib * 1024;
      let volume = await diskOf(vm.id);
      let pool: PoolRow;
      if (volume) pool = await pools.find(volume.pool_id);
      else if (vm.local_disk && !vm.host_id) {
        // Placed in this very pass, not yet written: the host makes it at boot; it is recorded once the VM runs.
        return [{ path: vmDiskName(vm.id), local: true, format: 'qcow2', ...(backing?.path ? { backingPath: backing.path, backingFormat: backing.format } : {}), sizeMiB }];
      } else {
        pool = await poolFor(vm);
        const now = new Date().toISOString();
        volume = {
          id: newId(), pool_id: pool.id, name: vmDiskName(vm.id), vm_id: vm.id, format: 'qcow2',
          backing_path: backing?.path ?? null, backing_format: backing ? backing.format : null, size_mib: sizeMiB, deleting: 0, generation: 1,
          state: 'creating', actual_size_mib: null, observed_generation: 0, message: null, ...noReplica, replicated: vm.replicated,
          created_at: now, updated_at: now,
        };
        await db.insertInto('volumes').values(volume).onConflict((oc) => oc.columns(['pool_id', 'name']).doNothing()).execute();
        volume = (await diskOf(vm.id)) ?? volume;
        touched(volume.id);
      }
      const where = pool.type === 'local' ? { path: volume.name, local: true } : { path: join(pool.path, volume.name) };
      // A replicated disk mirrors into its copy from boot on (not on the copy's own host: there it is the disk).
      const replica = volume.replicated && volume.replica_target && volume.replica_host_id !== vm.host_id
        ? { replica: JSON.parse(volume.replica_target) as ReplicaTarget } : {};
      return [{
        ...where, ...replica, format: volume.format,
        ...(volume.backing_path ? { backingPath: volume.backing_path } : {}),
        ...(volume.backing_format ? { backingFormat: volume.backing_format } : {}),
        sizeMiB: Math.max(sizeMiB, volume.size_mib),
      }];
    },

    /**
     * Records a larger size for a VM's disk, if it has one yet (a disk made later is made at the VM's size);
     * the volume controller grows it on a host. It must fit in what its pool has free: qcow2 is thin, but a
     * guest that fills its larger disk would fill the pool under every VM on it.
     */
    async grow(vm: VmRow, sizeGiB: number): Promise<void> {
      const volume = await diskOf(vm.id);
      const sizeMiB = sizeGiB * 1024;
      const fromMiB = volume?.size_mib ?? vm.disk_gib * 1024;
      if (sizeMiB <= fromMiB) return;
      // A disk not made yet is made later at the VM's size, in the pool it will live in: check that one.
      const pool = volume ? await pools.find(volume.pool_id) : vm.local_disk && !vm.host_id ? undefined : await poolFor(vm);
      const growMiB = sizeMiB - fromMiB;
      if (pool && pool.free_mib !== null && growMiB > pool.free_mib) {
        const freeGiB = Math.floor(pool.free_mib / 1024);
        throw new AppError('NO_CAPACITY', `growing the disk by ${growMiB / 1024} GiB does not fit: the pool has ${freeGiB} GiB free (pool ${pool.name})`, { freeGiB, growGiB: growMiB / 1024, pool: pool.name });
      }
      if (!volume) return;
      const row = await db.updateTable('volumes')
        .set({ size_mib: sizeMiB, generation: volume.generation + 1, updated_at: new Date().toISOString() })
        .where('id', '=', volume.id).where('generation', '=', volume.generation)
        .returning('id').executeTakeFirst();
      if (!row) throw new AppError('GENERATION_MISMATCH', `the disk of VM ${vm.name} changed meanwhile; try again`);
      touched(volume.id);
    },

    /** The VM is gone: its volumes are marked for deletion, which the volume controller does on a host. */
    async removeFor(vmId: string): Promise<void> {
      const rows = await db.selectFrom('volumes').select(['id', 'generation']).where('vm_id', '=', vmId).where('deleting', '=', 0).execute();
      const now = new Date().toISOString();
      for (const r of rows) {
        await db.updateTable('volumes').set({ deleting: 1, generation: r.generation + 1, updated_at: now }).where('id', '=', r.id).execute();
        touched(r.id);
      }
    },

    /** Marks a file in a shared pool for deletion by a host (an image file control once copied there). */
    async discardFile(path: string): Promise<void> {
      const pool = await pools.find(DEFAULT_POOL);
      const prefix = `${pool.path}/`;
      if (!path.startsWith(prefix)) throw new Error(`${path} is not in pool ${pool.name}`);
      const now = new Date().toISOString();
      const id = newId();
      const format = path.endsWith('.raw') ? 'raw' : 'qcow2';
      await db.insertInto('volumes').values({
        id, pool_id: pool.id, name: path.slice(prefix.length), vm_id: null, format, backing_path: null, backing_format: null,
        size_mib: 1, deleting: 1, generation: 1, state: 'deleting', actual_size_mib: null, observed_generation: 0, message: null,
        replicated: 0, ...noReplica, created_at: now, updated_at: now,
      }).onConflict((oc) => oc.columns(['pool_id', 'name']).doUpdateSet({ deleting: 1, updated_at: now })).execute();
      const row = await db.selectFrom('volumes').select('id').where('pool_id', '=', pool.id).where('name', '=', path.slice(prefix.length)).executeTakeFirst();
      if (row) touched(row.id);
    },
  };
}
