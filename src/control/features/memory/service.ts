// Memory leases as the API offers them: a request is checked against what the hosts report now (an
// explicit mechanism that cannot apply is refused at once), then written with its task and event in one
// transaction; the memory broker grants it. Return and make-permanent are requests in the lease's spec.
import type { Kysely } from 'kysely';
import { newId } from '../../../lib/ids.ts';
import { AppError, notFound } from '../../errors.ts';
import { decodeCursor, page } from '../../http/pagination.ts';
import { chooseMechanism } from '../../memory/mechanisms.ts';
import type { MemoryParts } from '../../memory/context.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { Database, LeaseRow } from '../../store/schema.ts';
import type { Task, TaskKind } from '../tasks/service.ts';
import { type Borrow, type Lease, isFinal, leaseFromRow } from './model.ts';
import type { LeasePatch } from './store.ts';

export interface MemoryServiceDeps extends MemoryParts {
  db: Kysely<Database>;
  changes: ChangeFeed;
}

export type MemoryService = ReturnType<typeof createMemoryService>;

/** A temporary lease still in the works, or held: a VM has one at a time (their undoing would collide). */
const busy = (l: LeaseRow) => !isFinal(l.state) && !(l.state === 'active' && l.kind === 'permanent' && !l.permanent_requested);

export function createMemoryService(deps: MemoryServiceDeps) {
  const { db, leases, tasks, events, changes } = deps;
  const touched = (id: string) => changes.publish({ kind: 'memory-lease', id });

  async function find(id: string): Promise<LeaseRow> {
    const row = await leases.get(id);
    if (!row) throw notFound('LEASE_NOT_FOUND', 'memory lease', id);
    return row;
  }

  async function hostId(idOrName: string): Promise<string> {
    const h = deps.registry.all().find((x) => x.row.id === idOrName) ?? deps.registry.all().find((x) => x.row.name === idOrName);
    if (!h) throw notFound('HOST_NOT_FOUND', 'host', idOrName);
    return h.row.id;
  }

  /** Checks what can be known now; an explicit mechanism that cannot apply is the caller's error. */
  async function admit(body: Borrow): Promise<{ vmId: string; donor: string | null }> {
    const vm = await deps.vms.find(body.vmId);
    if (!vm) throw notFound('VM_NOT_FOUND', 'VM', body.vmId);
    if (vm.deleting || vm.phase !== 'running' || !vm.host_id) throw new AppError('INVALID_STATE', `VM ${vm.name} is ${vm.deleting ? 'being deleted' : vm.phase}; only a running VM borrows memory`, { phase: vm.phase });
    if (body.kind === 'permanent' && body.ttlS !== undefined) throw new AppError('VALIDATION_FAILED', 'a permanent lease does not expire: leave ttlS out');
    const mechanism = body.mechanism ?? 'auto';
    if (body.donorHostId && mechanism !== 'auto' && mechanism !== 'remote') throw new AppError('VALIDATION_FAILED', `donorHostId applies to the remote mechanism, not ${mechanism}`);
    const donor = body.donorHostId ? await hostId(body.donorHostId) : null;
    if (donor && donor === vm.host_id) throw new AppError('UNSUPPORTED', `VM ${vm.name} runs on the donor host itself; a host cannot lend to its own VMs`);
    const largest = deps.capacity.largestHostMiB();
    if (deps.capacity.size > 0 && body.sizeMiB > largest) throw new AppError('NO_CAPACITY', `${body.sizeMiB} MiB is more than any host has (the largest holds ${largest} MiB)`, { largestHostMiB: largest });
    const open = (await leases.openFor(vm.id)).find(busy);
    if (open) throw new AppError('VM_BUSY', `VM ${vm.name} has lease ${open.id} ${open.state}; return it or wait for it first`, { leaseId: open.id });
    if (mechanism !== 'auto') {
      const neighbours = await db.selectFrom('vms').selectAll().where('host_id', '=', vm.host_id).execute();
      const choice = chooseMechanism({ vm, sizeMiB: body.sizeMiB, kind: body.kind, asked: mechanism, donorHostId: donor, hosts: deps.registry.all(), neighbours, capacity: deps.capacity, policy: deps.policy });
      if (!choice.ok) throw new AppError(choice.code, choice.reason, { mechanism });
    }
    return { vmId: vm.id, donor };
  }

  /** A request on an existing lease: the lease's spec change and the task commit together, or nothing does. */
  async function request(id: string, kind: TaskKind, by: string | null, decide: (l: LeaseRow) => LeasePatch) {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const lease = await find(id);
      const patch = decide(lease);
      const done = await db.transaction().execute(async (trx) => {
        const task = await tasks.create({ kind, targetKind: 'memory-lease', targetId: lease.id, createdBy: by, message: `${kind} requested` }, trx);
        // A return overtakes a grant or a make-permanent still under way: that task is cancelled.
        const ended = lease.task_id ? await tasks.cancelIn(trx, [lease.task_id], `superseded by a ${kind}`) : [];
        const row = await leases.write(lease, { ...patch, task_id: task.id }, trx);
        if (!row) throw new Retry();
        return { row, task, ended };
      }).catch((err: unknown) => {
        if (err instanceof Retry) return undefined;
        throw err;
      });
      if (done) {
        for (const e of done.ended) events.notify(e);
        touched(id);
        return { lease: leaseFromRow(done.row), task: done.task };
      }
    }
    throw new AppError('GENERATION_MISMATCH', `memory lease ${id} keeps changing; try again`);
  }

  return {
    async get(id: string): Promise<Lease> {
      return leaseFromRow(await find(id));
    },

    async list(q: { limit: number; cursor?: string; vmId?: string; state?: string }): Promise<{ items: Lease[]; nextCursor: string | null }> {
      const c = decodeCursor(q.cursor);
      const vmId = q.vmId ? ((await deps.vms.find(q.vmId))?.id ?? q.vmId) : undefined;
      const rows = (await leases.list({ limit: q.limit, vmId, state: q.state, ...(c ? { after: c } : {}) })).map(leaseFromRow);
      return page(rows, q.limit, (l) => ({ at: l.createdAt, id: l.id }));
    },

    async borrow(body: Borrow, by: string | null, origin: 'api' | 'policy' = 'api'): Promise<{ lease: Lease; task: Task }> {
      const { vmId, donor } = await admit(body);
      const now = new Date().toISOString();
      const id = newId();
      const row: LeaseRow = {
        id, vm_id: vmId, size_mib: body.sizeMiB, kind: body.kind, mechanism_asked: body.mechanism ?? 'auto', donor_asked: donor,
        ttl_s: body.ttlS ?? null, origin, created_by: by, return_requested: 0, permanent_requested: body.kind === 'permanent' ? 1 : 0,
        task_id: null, state: 'requested', mechanism: null, borrower_host_id: null, donor_host_id: null, message: null, plan: null,
        step_deadline: null, expires_at: null, granted_at: null, ended_at: null, resource_version: 1, created_at: now, updated_at: now,
      };
      const { task, event } = await db.transaction().execute(async (trx) => {
        const task = await tasks.create({ kind: 'memory-borrow', targetKind: 'memory-lease', targetId: id, createdBy: by, params: { vmId, sizeMiB: body.sizeMiB }, message: 'lease requested' }, trx);
        await leases.insert({ ...row, task_id: task.id }, trx);
        const event = await events.record({ type: 'memory.lease.requested', objectKind: 'memory-lease', objectId: id, message: `VM ${vmId} asks for ${body.sizeMiB} MiB (${body.kind})`, data: { vmId, sizeMiB: body.sizeMiB, kind: body.kind, mechanism: row.mechanism_asked } }, trx);
        return { task, event };
      });
      events.notify(event);
      touched(id);
      return { lease: leaseFromRow({ ...row, task_id: task.id }), task };
    },

    /** Gives the memory back: everything the lease did is undone (balloons, devices, exports). */
    return(id: string, by: string | null) {
      return request(id, 'memory-return', by, (l) => {
        if (isFinal(l.state)) throw new AppError('INVALID_STATE', `memory lease ${l.id} is already ${l.state}`, { state: l.state });
        if (l.kind === 'permanent' && l.state === 'active' && !l.permanent_requested) throw new AppError('INVALID_STATE', `memory lease ${l.id} is permanent: it is part of the VM now; change the VM's memory instead`);
        if (l.return_requested) throw new AppError('INVALID_STATE', `memory lease ${l.id} is being returned already`);
        return { return_requested: 1 };
      });
    },

    /** Keeps the memory for good: it becomes part of the VM's spec, on its host or on one with room. */
    async makePermanent(id: string, by: string | null) {
      const vm = await deps.vms.get((await find(id)).vm_id);
      return request(id, 'memory-make-permanent', by, (l) => {
        if (vm && vm.memory_mib + l.size_mib > vm.max_memory_mib) {
          throw new AppError('UNSUPPORTED', `VM ${vm.name} would boot with ${vm.memory_mib + l.size_mib} MiB, above its maxMemoryMiB ${vm.max_memory_mib}`);
        }
        if (l.state !== 'active') throw new AppError('INVALID_STATE', `memory lease ${l.id} is ${l.state}; only an active lease can be made permanent`, { state: l.state });
        if (l.kind === 'permanent' || l.permanent_requested) throw new AppError('INVALID_STATE', `memory lease ${l.id} is permanent already`);
        if (l.return_requested) throw new AppError('INVALID_STATE', `memory lease ${l.id} is being returned`);
        return { permanent_requested: 1 };
      });
    },
  };
}

class Retry extends Error {}
