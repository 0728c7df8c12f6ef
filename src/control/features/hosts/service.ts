// Hosts: joining with a single-use token, per-host credentials, the live view, drain and activate.
import type { Kysely } from 'kysely';
import { hashToken, newId, newSecret } from '../../../lib/ids.ts';
import type { JoinRequest, JoinResponse } from '../../../protocol/messages.ts';
import { AppError, notFound } from '../../errors.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { Database, HostRow } from '../../store/schema.ts';
import type { EventService } from '../events/service.ts';
import type { Task, TaskService } from '../tasks/service.ts';
import { isFinished } from '../tasks/service.ts';
import { type Host, hostFromRow } from './model.ts';
import type { HostRegistry } from './registry.ts';

export interface HostServiceDeps {
  db: Kysely<Database>;
  registry: HostRegistry;
  capacity: CapacityIndex;
  events: EventService;
  tasks: TaskService;
  /** Moves one VM off a host (the VM service's migrate), for drains. */
  migrateVm: (vmId: string, by: string | null) => Promise<{ task: Task }>;
  stopVm: (vmId: string, by: string | null) => Promise<{ task: Task }>;
}

const JOIN_TOKEN_TTL_MS = 3600_000;

export type HostService = ReturnType<typeof createHostService>;

export function createHostService(deps: HostServiceDeps) {
  const { db, registry, capacity, events, tasks } = deps;

  function view(row: HostRow): Host {
    const live = registry.get(row.id);
    const usage = capacity.usage(row.id);
    return hostFromRow(live?.row ?? row, {
      connected: !!live?.connection,
      lastHeartbeatAt: live?.lastHeartbeatMs ? new Date(live.lastHeartbeatMs).toISOString() : null,
      memoryFreeMiB: live?.memoryFreeMiB,
      allocatedMiB: usage?.usedMiB ?? 0,
      vmCount: live ? [...live.vms.values()].filter((v) => v.state !== 'incoming').length : 0,
    });
  }

  function find(idOrName: string) {
    const live = registry.all().find((h) => h.row.id === idOrName || h.row.name === idOrName);
    if (!live) throw notFound('HOST_NOT_FOUND', 'host', idOrName);
    return live;
  }

  async function waitForTask(id: string): Promise<Task> {
    for (;;) {
      const t = await tasks.get(id);
      if (isFinished(t.state)) return t;
      await new Promise((r) => setTimeout(r, 200).unref());
    }
  }

  /** Migrates running VMs off a host (stopped ones are just unassigned), one by one, onto the task. */
  async function moveAway(hostName: string, vms: { id: string; desired_power: string }[], taskId: string, by: string | null): Promise<void> {
    const failures: string[] = [];
    let done = 0;
    for (const vm of vms) {
      try {
        const child = vm.desired_power === 'running' ? await deps.migrateVm(vm.id, by) : await deps.stopVm(vm.id, by);
        const finished = await waitForTask(child.task.id);
        if (finished.state !== 'succeeded') failures.push(`${vm.id}: ${finished.error?.message ?? finished.state}`);
      } catch (err) {
        failures.push(`${vm.id}: ${err instanceof Error ? err.message : String(err)}`);
      }
      await tasks.progress(taskId, (++done / Math.max(1, vms.length)) * 100, `${done} of ${vms.length} VMs handled`);
    }
    if (failures.length) await tasks.fail(taskId, 'DRAIN_INCOMPLETE', `${failures.length} VMs could not be moved: ${failures.join('; ')}`);
    else await tasks.succeed(taskId, `host ${hostName} is empty and in maintenance`);
  }

  return {
    list: (): Host[] => registry.all().map((h) => view(h.row)).sort((a, b) => a.name.localeCompare(b.name)),
    get: (idOrName: string): Host => view(find(idOrName).row),

    async createJoinToken(userId: string): Promise<{ token: string; expiresAt: string }> {
      const token = newSecret('awj');
      const expiresAt = new Date(Date.now() + JOIN_TOKEN_TTL_MS).toISOString();
      await db.insertInto('join_tokens').values({ id: newId(), token_hash: hashToken(token), created_by: userId, expires_at: expiresAt, used_at: null, host_id: null }).execute();
      return { token, expiresAt };
    },

    async join(req: JoinRequest): Promise<JoinResponse> {
      const credential = newSecret('awh');
      const now = new Date().toISOString();
      const id = newId();
      const row: HostRow = {
        id,
        name: req.name,
        state: 'joining',
        maintenance: 0,
        cpus: req.facts.cpus,
        memory_mib: req.facts.memoryMiB,
        memory_free_mib: req.facts.memoryFreeMiB,
        address: req.facts.address,
        driver: req.facts.driver,
        accelerator: req.facts.accelerator ?? null,
        capabilities: JSON.stringify(req.facts.capabilities),
        labels: '{}',
        zone: null,
        credential_hash: hashToken(credential),
        last_heartbeat_at: null,
        generation: 1,
        created_at: now,
        updated_at: now,
      };
      await db.transaction().execute(async (trx) => {
        const used = await trx
          .updateTable('join_tokens')
          .set({ used_at: now, host_id: id })
          .where('token_hash', '=', hashToken(req.joinToken))
          .where('used_at', 'is', null)
          .where('expires_at', '>', now)
          .executeTakeFirst();
        if (Number(used.numUpdatedRows) !== 1) throw new AppError('UNAUTHORIZED', 'the join token is unknown, used or expired');
        const taken = await trx.selectFrom('hosts').select('id').where('name', '=', req.name).executeTakeFirst();
        if (taken) throw new AppError('NAME_TAKEN', `a host named ${req.name} already exists`, { name: req.name });
        await trx.insertInto('hosts').values(row).execute();
      });
      registry.add(row);
      await events.emit({ type: 'host.joined', objectKind: 'host', objectId: id, message: `host ${req.name} joined`, data: { cpus: req.facts.cpus, memoryMiB: req.facts.memoryMiB } });
      return { hostId: id, credential };
    },

    /** The host a credential belongs to, or undefined. */
    async authenticateAgent(credential: string): Promise<string | undefined> {
      const row = await db.selectFrom('hosts').select('id').where('credential_hash', '=', hashToken(credential)).executeTakeFirst();
      return row?.id;
    },

    async drain(idOrName: string, by: string | null): Promise<{ host: Host; task: Task }> {
      const host = find(idOrName);
      if (host.row.state !== 'ready' || !host.connection) throw new AppError('HOST_NOT_READY', `host ${host.row.name} is ${host.row.state}; only a ready host can be drained`);
      const running = await db.selectFrom('vms').select(['id', 'desired_power']).where('host_id', '=', host.row.id).execute();
      await registry.setMaintenance(host.row.id, true);
      const task = await tasks.create({ kind: 'drain', targetKind: 'host', targetId: host.row.id, createdBy: by, message: `moving ${running.length} VMs` });
      // Shutdown mid-drain leaves the task unfinished; the next start fails it with the reason.
      moveAway(host.row.name, running, task.id, by).catch(() => undefined);
      return { host: view(host.row), task };
    },

    async update(idOrName: string, patch: { labels?: Record<string, string>; zone?: string | null }): Promise<Host> {
      const host = find(idOrName);
      const labels = patch.labels ?? (JSON.parse(host.row.labels) as Record<string, string>);
      await registry.setLabels(host.row.id, labels, patch.zone);
      await events.emit({ type: 'host.updated', objectKind: 'host', objectId: host.row.id, message: `host ${host.row.name} updated`, data: { labels, zone: patch.zone } });
      return view(registry.get(host.row.id)!.row);
    },

    async activate(idOrName: string): Promise<Host> {
      const host = find(idOrName);
      await registry.setMaintenance(host.row.id, false);
      await events.emit({ type: 'host.activated', objectKind: 'host', objectId: host.row.id, message: `host ${host.row.name} leaves maintenance` });
      return view(registry.get(host.row.id)!.row);
    },
  };
}
