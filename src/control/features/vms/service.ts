// VM operations as the API offers them: each checks its input and the VM's state, writes the VM's spec
// (never its status) by compare-and-set together with the request's task, and leaves the rest to the VM
// controller. Nothing here talks to an agent, so any control replica can serve it.
import type { Kysely } from 'kysely';
import { type HaAdmission, admitHaVm } from './ha-admission.ts';
import { copyInStep } from '../../storage/failover.ts';
import { looksLikeId, macFor, newId } from '../../../lib/ids.ts';
import { AppError, notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { Database, VmRow } from '../../store/schema.ts';
import type { EventService } from '../events/service.ts';
import type { HostRegistry } from '../hosts/registry.ts';
import type { ImageService } from '../images/service.ts';
import type { Task, TaskKind, TaskService } from '../tasks/service.ts';
import { type CreateVm, type Vm, type VmPhase, vmFromRow } from './model.ts';
import { type VmSpecPatch, type VmStore, pendingMigration, untouched } from './store.ts';
import type { Volumes } from '../volumes/service.ts';

export interface VmServiceDeps {
  db: Kysely<Database>;
  store: VmStore;
  tasks: TaskService;
  events: EventService;
  images: ImageService;
  capacity: CapacityIndex;
  registry: HostRegistry;
  changes: ChangeFeed;
  volumes: Volumes;
  /** The image of VMs created without one (the test guest in a QEMU demo). */
  defaultImage?: string;
  haAdmission: HaAdmission;
}

export interface ListVms {
  limit: number;
  cursor?: string;
  hostId?: string;
  phase?: string;
  name?: string;
}

export type VmService = ReturnType<typeof createVmService>;

/** How often a request is re-read and re-decided when a controller wrote the VM meanwhile. */
const ATTEMPTS = 5;

export function createVmService(deps: VmServiceDeps) {
  const { db, store, tasks, events, capacity, changes } = deps;
  const touched = (id: string) => changes.publish({ kind: 'vm', id });
  /** The VM with what its host last measured of it (the leader holds the reports). */
  const withStats = (row: VmRow): Vm => vmFromRow(row, row.host_id ? deps.registry.get(row.host_id)?.vms.get(row.id) : undefined);

  async function find(idOrName: string): Promise<VmRow> {
    const row = await store.find(idOrName);
    if (!row) throw notFound('VM_NOT_FOUND', 'VM', idOrName);
    return row;
  }

  function assertLive(vm: VmRow): void {
    if (vm.deleting) throw new AppError('INVALID_STATE', `VM ${vm.name} is being deleted`, { phase: vm.phase });
  }

  function assertPhase(vm: VmRow, allowed: VmPhase[], action: string): void {
    assertLive(vm);
    if (!allowed.includes(vm.phase as VmPhase)) {
      throw new AppError('INVALID_STATE', `cannot ${action} VM ${vm.name} while it is ${vm.phase}`, { phase: vm.phase });
    }
  }

  /**
   * One request: `decide` looks at the VM as it is and returns the spec change (or throws why not); the
   * change, the request's task and the cancellation of tasks it supersedes commit together only if nobody
   * wrote the VM since it was read. A controller that did is not the user's problem: read again, decide
   * again. One long operation runs at a time per VM: the unique index on active tasks decides a race.
   */
  type TargetHost = Awaited<ReturnType<typeof hostRow>>;

  /** For a replicated VM, the host of its disk's copy, checked to take the VM now; undefined for others. */
  async function copyHost(vm: VmRow, asked: TargetHost | undefined): Promise<TargetHost | undefined> {
    if (!vm.replicated) return undefined;
    const v = await db.selectFrom('volumes').select(['replica_host_id', 'replica_state', 'replica_token', 'replica_message'])
      .where('vm_id', '=', vm.id).where('replicated', '=', 1).where('deleting', '=', 0).executeTakeFirst();
    if (!v?.replica_host_id) {
      throw new AppError('INVALID_STATE', `VM ${vm.name}'s disk has no copy on another host to move onto (${v?.replica_message ?? 'none was made yet'})`);
    }
    const host = await hostRow(v.replica_host_id);
    if (asked && asked.id !== host.id) {
      throw new AppError('UNSUPPORTED', `VM ${vm.name} is on replicated storage: it live-migrates only to ${host.name}, which holds the copy of its disk`, { copyHostId: host.id });
    }
    const copy = copyInStep(v, vm);
    if (!copy.inStep) {
      throw new AppError('INVALID_STATE', `the copy of VM ${vm.name}'s disk on ${host.name} is ${copy.state}; it can move once the copy is in step`, { copyHostId: host.id });
    }
    return host;
  }

  async function request(
    idOrName: string,
    kind: TaskKind,
    by: string | null,
    decide: (vm: VmRow, active: Task[]) => {
      patch: VmSpecPatch; params?: Record<string, unknown>; supersedes?: string[];
      /** A check that must hold as the change commits, run in its transaction first (HA admission). */
      admit?: (trx: Kysely<Database>) => Promise<void>;
    },
  ) {
    for (let attempt = 1; ; attempt++) {
      const vm = await find(idOrName);
      const active = await tasks.activeFor(vm.id);
      const { patch, params, supersedes = [], admit } = decide(vm, active);
      const replaced = active.filter((t) => supersedes.includes(t.kind));
      const busy = active.find((t) => !replaced.includes(t));
      if (busy) throw new AppError('VM_BUSY', `VM ${vm.name} is busy with a ${busy.kind} task (${busy.id})`, { taskId: busy.id });
      const done = await db.transaction().execute(async (trx) => {
        await admit?.(trx);
        const row = await store.writeSpec(vm, patch, trx);
        if (!row) return undefined;
        const ended = await tasks.cancelIn(trx, replaced.map((t) => t.id), `superseded by a ${kind}`);
        const task = await tasks.create({ kind, targetKind: 'vm', targetId: vm.id, createdBy: by, params, message: `${kind} requested` }, trx);
        return { row, task, ended };
      });
      if (done) {
        for (const e of done.ended) events.notify(e);
        touched(vm.id);
        return { vm: vmFromRow(done.row), task: done.task };
      }
      if (attempt >= ATTEMPTS) throw new AppError('GENERATION_MISMATCH', `VM ${vm.name} keeps changing; try again`);
    }
  }

  return {
    find,

    async get(idOrName: string): Promise<Vm> {
      return withStats(await find(idOrName));
    },

    async list(q: ListVms): Promise<{ items: Vm[]; nextCursor: string | null }> {
      const c = decodeCursor(q.cursor);
      const rows = (await store.list({ ...q, ...(c ? { after: c } : {}) })).map(withStats);
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
      // A VM booted from a kernel has no disk unless it asks for one: then a blank data disk of that size.
      const hasDisk = image?.format !== 'kernel';
      if (body.storage === 'replicated' && (!image || (!hasDisk && !body.diskGiB))) {
        throw new AppError('VALIDATION_FAILED', 'a replicated VM needs a disk to replicate: give it a disk image, or diskGiB with a kernel image', { storage: body.storage });
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
        disk_gib: hasDisk ? (body.diskGiB ?? Math.max(1, Math.ceil((image?.size_mib ?? 0) / 1024))) : (body.diskGiB ?? 0),
        // A replicated disk lives on its host as a local one does; the replicator keeps its copy elsewhere.
        local_disk: body.storage === 'local' || body.storage === 'replicated' ? 1 : 0,
        replicated: body.storage === 'replicated' ? 1 : 0,
        ha: body.ha ? 1 : 0,
        ha_priority: body.haPriority ?? 0,
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
        ...untouched,
        generation: 1,
        observed_generation: start ? 0 : 1,
        created_at: now,
        updated_at: now,
      };
      // The VM, its task and its event are written together or not at all; the unique name is the check.
      // A name taken meanwhile is the unique index's call, answered as NAME_TAKEN by the error handler.
      const { task, created } = await db.transaction().execute(async (trx) => {
        if (row.ha && start) await admitHaVm(trx, deps.haAdmission, row.name, row.memory_mib);
        await store.insert(row, trx);
        const task = await tasks.create({ kind: 'create', targetKind: 'vm', targetId: id, createdBy, message: 'created' }, trx);
        const created = await events.record({ type: 'vm.created', objectKind: 'vm', objectId: id, message: `VM ${body.name} created`, data: { cpus: body.cpus, memoryMiB: body.memoryMiB } }, trx);
        return { task, created };
      });
      events.notify(created);
      if (!start) await tasks.succeed(task.id, 'created (stopped)');
      touched(id);
      return { vm: vmFromRow(row), task: start ? task : await tasks.get(task.id) };
    },


    /** Starts a stopped VM, tries a failed one again, or takes back a stop not finished yet. */
    async start(idOrName: string, by: string | null) {
      // An HA VM that is to run again is counted from now on: it must fit after the hosts HA survives losing.
      return request(idOrName, 'start', by, (vm) => {
        assertLive(vm);
        if (vm.desired_power === 'running' && vm.phase !== 'failed') throw new AppError('INVALID_STATE', `VM ${vm.name} is already ${vm.phase === 'running' ? 'running' : 'starting'}`, { phase: vm.phase });
        const admit = vm.ha === 1 && vm.desired_power !== 'running'
          ? (trx: Kysely<Database>) => admitHaVm(trx, deps.haAdmission, vm.name, vm.memory_mib, vm.id) : undefined;
        return { patch: { desired_power: 'running' }, supersedes: ['stop'], admit };
      });
    },

    /** Stops a VM at any moment: while it boots, while it migrates (the migration is cancelled), or after a failure. */
    stop(idOrName: string, force: boolean, by: string | null) {
      return request(idOrName, 'stop', by, (vm) => {
        assertLive(vm);
        if (vm.desired_power === 'stopped' && (vm.phase === 'stopped' || vm.phase === 'failed') && !vm.op) {
          throw new AppError('INVALID_STATE', `VM ${vm.name} is already ${vm.phase}`, { phase: vm.phase });
        }
        return { patch: { desired_power: 'stopped' }, params: { force }, supersedes: ['start', 'create', 'migrate', 'reboot', 'set-memory'] };
      });
    },

    /** A reboot is a request in spec: a host away when it is asked reboots the VM once it is back. */
    reboot(idOrName: string, by: string | null) {
      return request(idOrName, 'reboot', by, (vm) => {
        assertPhase(vm, ['running', 'unknown'], 'reboot');
        if (vm.desired_power !== 'running') throw new AppError('INVALID_STATE', `VM ${vm.name} is being stopped`);
        return { patch: { reboot_request: vm.reboot_request + 1 } };
      });
    },

    async migrate(idOrName: string, targetHost: string | undefined, by: string | null) {
      let target = targetHost ? await hostRow(targetHost) : undefined;
      // A VM on replicated storage moves onto the copy of its disk: only there is its disk already.
      const copy = await copyHost(await find(idOrName), target);
      target = copy ?? target;
      return request(idOrName, 'migrate', by, (vm) => {
        assertPhase(vm, ['running'], 'migrate');
        if (vm.desired_power !== 'running') throw new AppError('INVALID_STATE', `VM ${vm.name} is being stopped`);
        if (target) {
          if (target.id === vm.host_id) throw new AppError('INVALID_STATE', `VM ${vm.name} already runs on ${target.name}`);
          if (target.state !== 'ready' || target.maintenance) throw new AppError('HOST_NOT_READY', `host ${target.name} is ${target.maintenance ? 'in maintenance' : target.state}`);
          const usage = capacity.usage(target.id);
          if (usage && usage.freeMiB < vm.memory_mib) {
            throw new AppError('NO_CAPACITY', `host ${target.name} has ${usage.freeMiB} MiB free; VM ${vm.name} needs ${vm.memory_mib} MiB`);
          }
        } else if (capacity.size > 0) {
          // The scheduler places it when the migration begins; say now when nothing could take it.
          const placement = capacity.place({
            memoryMiB: vm.memory_mib, cpus: vm.cpus, labels: JSON.parse(vm.placement_labels) as Record<string, string>,
            antiAffinity: vm.anti_affinity, exclude: vm.host_id ? [vm.host_id] : [],
          });
          if (!placement.ok) throw new AppError('NO_CAPACITY', placement.reason);
        }
        const id = newId();
        return { patch: { migrate_request: JSON.stringify({ id, targetHostId: target?.id ?? null }) }, params: { targetHostId: target?.id ?? null } };
      });
    },

    /** Cancels a migration that is asked for or under way; false when the task is not an active migration. */
    async cancelMigration(taskId: string): Promise<boolean> {
      const task = await tasks.get(taskId).catch(() => undefined);
      if (task?.kind !== 'migrate' || task.targetKind !== 'vm') return false;
      for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
        const vm = await store.get(task.targetId);
        if (!vm || !pendingMigration(vm)) return false;
        if (await store.writeSpec(vm, { migrate_request: null })) {
          touched(vm.id);
          return true;
        }
      }
      throw new AppError('GENERATION_MISMATCH', 'the VM keeps changing; try again');
    },

    /** A delete supersedes whatever the VM was doing: a boot is abandoned, a migration cancelled. */
    remove(idOrName: string, by: string | null) {
      return request(idOrName, 'delete', by, (vm) => {
        if (vm.deleting) throw new AppError('INVALID_STATE', `VM ${vm.name} is already being deleted`);
        const host = vm.host_id ? deps.registry.get(vm.host_id) : undefined;
        if (host && !host.connection && host.vms.size > 0 && host.row.state !== 'ready') throw new AppError('HOST_NOT_READY', `the host of VM ${vm.name} is unreachable`);
        return { patch: { deleting: 1 }, supersedes: ['create', 'start', 'stop', 'migrate', 'reboot', 'set-memory'] };
      });
    },

    /** Grows a stopped VM's disk; shrinking would lose data and is refused. */
    async resizeDisk(idOrName: string, diskGiB: number): Promise<Vm> {
      const vm = await find(idOrName);
      assertPhase(vm, ['stopped', 'failed'], 'resize the disk of');
      const [busy] = await tasks.activeFor(vm.id);
      if (busy) throw new AppError('VM_BUSY', `VM ${vm.name} is busy with a ${busy.kind} task (${busy.id})`, { taskId: busy.id });
      if (vm.disk_gib === 0) throw new AppError('UNSUPPORTED', `VM ${vm.name} has no disk to resize`);
      if (diskGiB < vm.disk_gib) throw new AppError('VALIDATION_FAILED', `the disk is ${vm.disk_gib} GiB; shrinking it to ${diskGiB} GiB would lose data`);
      // Recorded on the VM's volume; a host that reaches its pool grows it (the volume controller).
      await deps.volumes.grow(vm, diskGiB);
      const row = await store.writeSpec(vm, { disk_gib: diskGiB });
      if (!row) throw new AppError('GENERATION_MISMATCH', `VM ${vm.name} changed meanwhile; try again`);
      await events.emit({ type: 'vm.resized', objectKind: 'vm', objectId: vm.id, message: `VM ${vm.name} disk is ${diskGiB} GiB`, data: { diskGiB } });
      return vmFromRow(row);
    },

    /** The memory target is spec: it is applied again after a migration, a restart of the VM, of its agent or of control. */
    setMemory(idOrName: string, targetMiB: number, by: string | null) {
      return request(idOrName, 'set-memory', by, (vm) => {
        assertPhase(vm, ['running'], 'resize the memory of');
        if (targetMiB > vm.max_memory_mib) {
          throw new AppError('VALIDATION_FAILED', `targetMiB ${targetMiB} is above the VM's maxMemoryMiB ${vm.max_memory_mib}`);
        }
        return { patch: { memory_target_mib: targetMiB }, params: { targetMiB } };
      });
    },
  };

  async function hostRow(idOrName: string) {
    const rows = await db.selectFrom('hosts').select(['id', 'name', 'state', 'maintenance']).where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).execute();
    const row = rows.find((r) => r.id === idOrName) ?? rows[0];
    if (!row) throw notFound('HOST_NOT_FOUND', 'host', idOrName);
    return row;
  }
}
