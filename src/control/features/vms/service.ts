// VM operations as the API offers them: each checks its input and the VM's state, writes the desired
// state in one statement, records a task, and leaves the rest to the VM reconciler.
import type { Kysely } from 'kysely';
import { looksLikeId, macFor, newId } from '../../../lib/ids.ts';
import { AppError, notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import { CommandError } from '../agents/connection.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { Database, VmRow, VmUpdate } from '../../store/schema.ts';
import type { AwanEvent, EventService } from '../events/service.ts';
import type { HostRegistry } from '../hosts/registry.ts';
import type { ImageService } from '../images/service.ts';
import type { Task, TaskKind, TaskService } from '../tasks/service.ts';
import { type CreateVm, type Vm, type VmPhase, vmFromRow } from './model.ts';
import type { Volumes } from './volumes.ts';

/** The agent's own error code (INSUFFICIENT_MEMORY …) says more than a generic one. */
const codeOf = (err: Error, fallback: string) => (err instanceof CommandError ? err.code : fallback);

export interface VmServiceDeps {
  db: Kysely<Database>;
  tasks: TaskService;
  events: EventService;
  images: ImageService;
  capacity: CapacityIndex;
  registry: HostRegistry;
  changes: ChangeFeed;
  volumes: Volumes;
  /** The image of VMs created without one (the test guest in a QEMU demo). */
  defaultImage?: string;
}

export interface ListVms {
  limit: number;
  cursor?: string;
  hostId?: string;
  phase?: string;
  name?: string;
}

export type VmService = ReturnType<typeof createVmService>;

export function createVmService(deps: VmServiceDeps) {
  const { db, tasks, events, capacity, changes } = deps;
  const touched = (id: string) => changes.publish({ kind: 'vm', id });

  async function find(idOrName: string): Promise<VmRow> {
    const rows = await db.selectFrom('vms').selectAll().where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).execute();
    // An id names one VM for good: it wins over a name that happens to read the same (one made before
    // such names were refused).
    const row = rows.find((r) => r.id === idOrName) ?? rows[0];
    if (!row) throw notFound('VM_NOT_FOUND', 'VM', idOrName);
    return row;
  }

  /**
   * One long operation at a time per VM: a second one would race the first. This check gives the usual
   * case its clear message; the database's unique index on active tasks decides a race between two.
   */
  async function assertNoTask(vm: VmRow, trx: Kysely<Database> = db): Promise<void> {
    const [busy] = await tasks.activeFor(vm.id, trx);
    if (busy) throw new AppError('VM_BUSY', `VM ${vm.name} is busy with a ${busy.kind} task (${busy.id})`, { taskId: busy.id });
  }

  function assertPhase(vm: VmRow, allowed: VmPhase[], action: string): void {
    if (vm.deleting) throw new AppError('INVALID_STATE', `VM ${vm.name} is being deleted`, { phase: vm.phase });
    if (!allowed.includes(vm.phase as VmPhase)) {
      throw new AppError('INVALID_STATE', `cannot ${action} VM ${vm.name} while it is ${vm.phase}`, { phase: vm.phase });
    }
  }

  /** Writes a desired-state change only if nobody changed the VM since it was read. */
  async function change(vm: VmRow, patch: VmUpdate, trx: Kysely<Database> = db): Promise<VmRow> {
    const row = await trx
      .updateTable('vms')
      .set({ ...patch, generation: vm.generation + 1, updated_at: new Date().toISOString() })
      .where('id', '=', vm.id)
      .where('generation', '=', vm.generation)
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new AppError('GENERATION_MISMATCH', `VM ${vm.name} changed meanwhile; try again`);
    return row;
  }

  async function action(vm: VmRow, kind: TaskKind, createdBy: string | null, patch: VmUpdate, params?: Record<string, unknown>) {
    await assertNoTask(vm);
    // The task and the desired state are one change: a lost race leaves neither behind.
    const { task, row } = await db.transaction().execute(async (trx) => {
      const task = await tasks.create({ kind, targetKind: 'vm', targetId: vm.id, createdBy, params, message: `${kind} requested` }, trx);
      return { task, row: await change(vm, patch, trx) };
    });
    touched(vm.id);
    return { vm: vmFromRow(row), task };
  }

  return {
    find,

    async get(idOrName: string): Promise<Vm> {
      return vmFromRow(await find(idOrName));
    },

    async list(q: ListVms): Promise<{ items: Vm[]; nextCursor: string | null }> {
      const c = decodeCursor(q.cursor);
      let query = db.selectFrom('vms').selectAll().orderBy('created_at').orderBy('id').limit(q.limit + 1);
      if (c) query = query.where((eb) => eb.or([eb('created_at', '>', c.at), eb.and([eb('created_at', '=', c.at), eb('id', '>', c.id)])]));
      if (q.hostId) query = query.where('host_id', '=', q.hostId);
      if (q.phase) query = query.where('phase', '=', q.phase);
      if (q.name) query = query.where('name', 'like', `%${q.name.replace(/[%_\\]/g, '')}%`);
      const rows = (await query.execute()).map(vmFromRow);
      return page(rows, q.limit, (v) => ({ at: v.createdAt, id: v.id }));
    },

    async create(body: CreateVm, createdBy: string | null): Promise<{ vm: Vm; task: Task }> {
      const maxMemoryMiB = body.maxMemoryMiB ?? body.memoryMiB;
      if (maxMemoryMiB < body.memoryMiB) {
        throw new AppError('VALIDATION_FAILED', `maxMemoryMiB (${maxMemoryMiB}) must not be below memoryMiB (${body.memoryMiB})`);
      }
      if (looksLikeId(body.name)) {
        throw new AppError('VALIDATION_FAILED', `name ${body.name} has the form of an id; VMs are found by id or name, so pick another name`, { name: body.name });
      }
      const largest = capacity.largestHostMiB();
      if (capacity.size > 0 && body.memoryMiB > largest) {
        throw new AppError('NO_CAPACITY', `a VM of ${body.memoryMiB} MiB is larger than any host (the largest can hold ${largest} MiB)`, { largestHostMiB: largest });
      }
      const mostCpus = capacity.largestHostCpus();
      if (capacity.size > 0 && body.cpus > mostCpus) {
        throw new AppError('NO_CAPACITY', `a VM of ${body.cpus} CPUs is larger than any host (the largest can give ${mostCpus} CPUs)`, { largestHostCpus: mostCpus });
      }
      const imageRef = body.image ?? deps.defaultImage;
      const image = imageRef ? await deps.images.find(imageRef).catch(() => {
        throw new AppError('IMAGE_NOT_FOUND', `image ${imageRef} not found`, { image: imageRef });
      }) : undefined;
      // A VM booted from a kernel has no disk to size (one without an image boots from its own disk).
      const hasDisk = image?.format !== 'kernel';
      if (!hasDisk && body.diskGiB !== undefined) {
        throw new AppError('VALIDATION_FAILED', `VM ${body.name} has no disk (image ${image?.name} boots a kernel); diskGiB does not apply`, { diskGiB: body.diskGiB });
      }

      const id = newId();
      const now = new Date().toISOString();
      const start = body.start ?? true;
      const nics = (body.nics ?? [{ mode: 'user' as const }]).map((n, i) => ({ ...n, mac: macFor(id, i) }));
      const row: VmRow = {
        id,
        name: body.name,
        cpus: body.cpus,
        memory_mib: body.memoryMiB,
        max_memory_mib: maxMemoryMiB,
        image_id: image?.id ?? null,
        disk_gib: hasDisk ? (body.diskGiB ?? Math.max(1, Math.ceil((image?.size_mib ?? 0) / 1024))) : 0,
        local_disk: body.storage === 'local' ? 1 : 0,
        ha: body.ha ? 1 : 0,
        placement_labels: JSON.stringify(body.placementLabels ?? {}),
        anti_affinity: body.antiAffinity ?? null,
        nics: JSON.stringify(nics),
        desired_power: start ? 'running' : 'stopped',
        deleting: 0,
        host_id: null,
        target_host_id: null,
        phase: start ? 'pending' : 'stopped',
        message: null,
        memory_actual_mib: null,
        generation: 1,
        observed_generation: start ? 0 : 1,
        created_at: now,
        updated_at: now,
      };
      // The VM, its task and its event are written together or not at all; the unique name is the check.
      // A name taken meanwhile is the unique index's call, answered as NAME_TAKEN by the error handler.
      const { task, created } = await db.transaction().execute(async (trx) => {
        await trx.insertInto('vms').values(row).execute();
        const task = await tasks.create({ kind: 'create', targetKind: 'vm', targetId: id, createdBy, message: 'created' }, trx);
        const created = await events.record({ type: 'vm.created', objectKind: 'vm', objectId: id, message: `VM ${body.name} created`, data: { cpus: body.cpus, memoryMiB: body.memoryMiB } }, trx);
        return { task, created };
      });
      events.notify(created);
      if (!start) await tasks.succeed(task.id, 'created (stopped)');
      touched(id);
      return { vm: vmFromRow(row), task: start ? task : await tasks.get(task.id) };
    },

    async start(idOrName: string, by: string | null) {
      const vm = await find(idOrName);
      assertPhase(vm, ['stopped', 'failed'], 'start');
      return action(vm, 'start', by, { desired_power: 'running', phase: 'pending', message: null });
    },

    async stop(idOrName: string, force: boolean, by: string | null) {
      const vm = await find(idOrName);
      assertPhase(vm, ['running', 'starting', 'unknown', 'failed', 'pending', 'scheduling'], 'stop');
      return action(vm, 'stop', by, { desired_power: 'stopped' }, { force });
    },

    async reboot(idOrName: string, by: string | null) {
      const vm = await find(idOrName);
      assertPhase(vm, ['running'], 'reboot');
      await assertNoTask(vm);
      const host = vm.host_id ? deps.registry.get(vm.host_id) : undefined;
      if (!host?.connection) throw new AppError('HOST_NOT_READY', `the host of VM ${vm.name} is not connected`);
      const task = await tasks.create({ kind: 'reboot', targetKind: 'vm', targetId: vm.id, createdBy: by });
      host.connection
        .command({ op: 'reboot', vmId: vm.id }, { timeoutMs: 60_000 })
        .then(() => tasks.succeed(task.id, 'rebooted'))
        .catch((err: Error) => tasks.fail(task.id, codeOf(err, 'REBOOT_FAILED'), err.message));
      return { vm: vmFromRow(vm), task };
    },

    async migrate(idOrName: string, targetHost: string | undefined, by: string | null) {
      const vm = await find(idOrName);
      assertPhase(vm, ['running'], 'migrate');
      let targetId: string;
      if (targetHost) {
        const target = deps.registry.all().find((h) => h.row.id === targetHost || h.row.name === targetHost);
        if (!target) throw notFound('HOST_NOT_FOUND', 'host', targetHost);
        if (target.row.id === vm.host_id) throw new AppError('INVALID_STATE', `VM ${vm.name} already runs on ${target.row.name}`);
        if (!target.connection || target.row.state !== 'ready') throw new AppError('HOST_NOT_READY', `host ${target.row.name} is not ready`);
        const usage = capacity.usage(target.row.id);
        if (usage && usage.freeMiB < vm.memory_mib) {
          throw new AppError('NO_CAPACITY', `host ${target.row.name} has ${usage.freeMiB} MiB free; VM ${vm.name} needs ${vm.memory_mib} MiB`);
        }
        targetId = target.row.id;
      } else {
        const placement = capacity.place({
          memoryMiB: vm.memory_mib,
          cpus: vm.cpus,
          labels: JSON.parse(vm.placement_labels) as Record<string, string>,
          antiAffinity: vm.anti_affinity,
          exclude: vm.host_id ? [vm.host_id] : [],
        });
        if (!placement.ok) throw new AppError('NO_CAPACITY', placement.reason);
        targetId = placement.hostId;
      }
      return action(vm, 'migrate', by, { target_host_id: targetId }, { targetHostId: targetId });
    },

    async remove(idOrName: string, by: string | null) {
      const vm = await find(idOrName);
      if (vm.deleting) throw new AppError('INVALID_STATE', `VM ${vm.name} is already being deleted`);
      if (vm.phase === 'migrating') throw new AppError('INVALID_STATE', `cannot delete VM ${vm.name} while it migrates`);
      const host = vm.host_id ? deps.registry.get(vm.host_id) : undefined;
      if (host && !host.connection && host.vms.size > 0) throw new AppError('HOST_NOT_READY', `the host of VM ${vm.name} is unreachable`);
      // A delete supersedes whatever the VM was doing (but a migration, which must settle first), in the
      // same change that records it.
      const { task, row, superseded } = await db.transaction().execute(async (trx) => {
        const active = await tasks.activeFor(vm.id, trx);
        const migration = active.find((t) => t.kind === 'migrate');
        if (migration) {
          throw new AppError('VM_BUSY', `VM ${vm.name} is being migrated (task ${migration.id}); cancel the migration or wait for it, then delete`, { taskId: migration.id });
        }
        const superseded = await tasks.failIn(trx, active.map((t) => t.id), 'VM_DELETED', 'the VM is being deleted');
        const task = await tasks.create({ kind: 'delete', targetKind: 'vm', targetId: vm.id, createdBy: by, message: 'delete requested' }, trx);
        return { task, row: await change(vm, { deleting: 1 }, trx), superseded };
      });
      for (const e of superseded) events.notify(e);
      touched(vm.id);
      return { vm: vmFromRow(row), task };
    },

    /** Grows a stopped VM's disk; shrinking would lose data and is refused. */
    async resizeDisk(idOrName: string, diskGiB: number): Promise<Vm> {
      const vm = await find(idOrName);
      assertPhase(vm, ['stopped', 'failed'], 'resize the disk of');
      await assertNoTask(vm);
      if (vm.disk_gib === 0) throw new AppError('UNSUPPORTED', `VM ${vm.name} has no disk to resize`);
      if (diskGiB < vm.disk_gib) throw new AppError('VALIDATION_FAILED', `the disk is ${vm.disk_gib} GiB; shrinking it to ${diskGiB} GiB would lose data`);
      if (!vm.local_disk) await deps.volumes.grow(vm.id, vm.disk_gib, diskGiB);
      else if (vm.host_id) {
        // The disk lives on its host: that host grows it.
        const host = deps.registry.get(vm.host_id);
        if (!host?.connection) throw new AppError('HOST_NOT_READY', `the host keeping VM ${vm.name}'s disk is not connected`);
        await host.connection.command({ op: 'growDisk', vmId: vm.id, index: 0, sizeMiB: diskGiB * 1024 }, { timeoutMs: 60_000 }).catch((err: Error) => {
          throw new AppError('UNSUPPORTED', `cannot resize the disk: ${err.message}`);
        });
      }
      const row = await change(vm, { disk_gib: diskGiB });
      await events.emit({ type: 'vm.resized', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} disk is ${diskGiB} GiB`, data: { diskGiB } });
      return vmFromRow(row);
    },

    async setMemory(idOrName: string, targetMiB: number, by: string | null) {
      const vm = await find(idOrName);
      assertPhase(vm, ['running'], 'resize the memory of');
      if (targetMiB > vm.max_memory_mib) {
        throw new AppError('VALIDATION_FAILED', `targetMiB ${targetMiB} is above the VM's maxMemoryMiB ${vm.max_memory_mib}`);
      }
      await assertNoTask(vm);
      const host = deps.registry.get(vm.host_id!);
      if (!host?.connection) throw new AppError('HOST_NOT_READY', `the host of VM ${vm.name} is not connected`);
      const task = await tasks.create({ kind: 'set-memory', targetKind: 'vm', targetId: vm.id, createdBy: by, params: { targetMiB } });
      // The host answers once the guest holds the new size (or gives up after its own deadline, well
      // within this one); the task states the size the host reports, and only the asked one is success.
      host.connection
        .command<{ memoryActualMiB?: number }>({ op: 'setMemory', vmId: vm.id, targetMiB }, { timeoutMs: 90_000 })
        .then(async (s) => {
          const actualMiB = s?.memoryActualMiB;
          if (actualMiB === targetMiB) await tasks.succeed(task.id, `memory is ${actualMiB} MiB`, { memoryActualMiB: actualMiB });
          else await tasks.fail(task.id, 'MEMORY_NOT_REACHED', `the guest holds ${actualMiB ?? 'an unknown amount of'} MiB, not the ${targetMiB} MiB asked`);
        })
        .catch((err: Error) => tasks.fail(task.id, codeOf(err, 'SET_MEMORY_FAILED'), err.message))
        .finally(() => touched(vm.id));
      return { vm: vmFromRow(vm), task };
    },
  };
}
