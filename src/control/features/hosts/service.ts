// Hosts: joining with a single-use token, per-host credentials, the fleet view, and the spec the user
// sets (labels, zone, maintenance, a drain request). Any replica serves it: the leader shows its live
// table, a follower what SQL holds (the leader writes host status there within a second or so).
import { hashToken, newId, newSecret } from '../../../lib/ids.ts';
import type { JoinRequest, JoinResponse } from '../../../protocol/messages.ts';
import { AppError, notFound } from '../../errors.ts';
import type { ChangeFeed } from '../../reconcile/changes.ts';
import type { CapacityIndex } from '../../scheduler/capacity-index.ts';
import type { Database, HostRow } from '../../store/schema.ts';
import type { Kysely } from 'kysely';
import type { EventService } from '../events/service.ts';
import type { Task, TaskService } from '../tasks/service.ts';
import { isFinished } from '../tasks/service.ts';
import { type Host, type PowerFenceRequest, hostFromRow } from './model.ts';
import type { HostRegistry } from './registry.ts';
import type { HostSpec, HostStore } from './store.ts';

export interface HostServiceDeps {
  db: Kysely<Database>;
  store: HostStore;
  registry: HostRegistry;
  capacity: CapacityIndex;
  events: EventService;
  tasks: TaskService;
  changes: ChangeFeed;
}

const JOIN_TOKEN_TTL_MS = 3600_000;
/** A spec write that lost its compare-and-set is read again and retried this many times, then a 409. */
const SPEC_ATTEMPTS = 5;

export type HostService = ReturnType<typeof createHostService>;

export function createHostService(deps: HostServiceDeps) {
  const { db, store, registry, capacity, events, tasks, changes } = deps;

  function view(row: HostRow): Host {
    const live = registry.leading ? registry.get(row.id) : undefined;
    if (!live) return hostFromRow(row);
    return hostFromRow(live.row.generation >= row.generation ? live.row : { ...live.row, ...pickSpec(row) }, {
      connected: !!live.connection,
      lastHeartbeatAt: live.heardAtMs ? new Date(live.heardAtMs).toISOString() : null,
      memoryFreeMiB: live.memoryFreeMiB,
      allocatedMiB: capacity.usage(row.id)?.usedMiB ?? 0,
      vmCount: [...live.vms.values()].filter((v) => v.state !== 'incoming').length,
      leaseExpiresAt: new Date(live.leaseExpiresMs).toISOString(),
      memoryLentMiB: live.memoryLentMiB ?? 0,
      // Remote memory plugged into this host's VMs: RAM of other hosts its guests swap to.
      memoryBorrowedMiB: [...live.vms.values()].reduce((n, v) => n + (v.swapTotalMiB ?? 0), 0),
    });
  }

  async function find(idOrName: string): Promise<HostRow> {
    const row = await store.find(idOrName);
    if (!row) throw notFound('HOST_NOT_FOUND', 'host', idOrName);
    return row;
  }

  /**
   * Reads the host, lets `decide` compute the spec change from what it read (or refuse) inside a
   * transaction (so it can add rows of its own, a task), and writes it by compare-and-set on generation;
   * a lost race rolls back and reads again.
   */
  async function changeSpec(idOrName: string, decide: (row: HostRow, trx: Kysely<Database>) => Promise<Partial<HostSpec> | undefined>): Promise<HostRow> {
    for (let attempt = 0; attempt < SPEC_ATTEMPTS; attempt++) {
      const row = await find(idOrName);
      const next = await db.transaction().execute(async (trx) => {
        const patch = await decide(row, trx);
        if (!patch) return row;
        const written = await store.updateSpec(row, patch, trx);
        if (!written) throw new LostRace();
        return written;
      }).catch((err: unknown) => {
        if (err instanceof LostRace) return undefined;
        throw err;
      });
      if (!next) continue;
      if (next !== row) {
        registry.applyRow(next);
        changes.publish({ kind: 'host', id: next.id });
      }
      return next;
    }
    throw new AppError('GENERATION_MISMATCH', `host ${idOrName} kept changing meanwhile; try again`);
  }

  const connected = (row: HostRow) => (registry.leading ? !!registry.get(row.id)?.connection : row.connected === 1);

  return {
    async list(): Promise<Host[]> {
      if (registry.leading) return registry.all().map((h) => view(h.row)).sort((a, b) => a.name.localeCompare(b.name));
      return (await store.all()).map(view);
    },
    get: async (idOrName: string): Promise<Host> => {
      const live = registry.leading ? registry.all().find((h) => h.row.id === idOrName || h.row.name === idOrName) : undefined;
      return view(live?.row ?? (await find(idOrName)));
    },

    async createJoinToken(userId: string): Promise<{ token: string; expiresAt: string }> {
      const token = newSecret('awj');
      const expiresAt = new Date(Date.now() + JOIN_TOKEN_TTL_MS).toISOString();
      await store.createJoinToken({ id: newId(), token_hash: hashToken(token), created_by: userId, expires_at: expiresAt, used_at: null, host_id: null });
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
        drain_task_id: null,
        connected: 0,
        lease_expires_at: null,
        vm_count: 0,
        memory_allocated_mib: 0,
        status_version: 1,
        status_epoch: 0,
        failed_at: null,
        state_reason: null,
        recent_failures: null,
        quarantined_at: null,
        quarantine_lifted_at: null,
        power_fence: null,
        power_fenced_for: null,
      };
      await store.join(req.joinToken, row);
      registry.add(row);
      changes.publish({ kind: 'host', id });
      await events.emit({ type: 'host.joined', objectKind: 'host', objectId: id, message: `host ${req.name} joined`, data: { cpus: req.facts.cpus, memoryMiB: req.facts.memoryMiB } });
      return { hostId: id, credential };
    },

    /** The host a credential belongs to, or undefined. */
    authenticateAgent: (credential: string): Promise<string | undefined> => store.byCredential(credential),

    /**
     * Records a drain in the host's spec (maintenance on, the drain's task) and returns the task; the drain
     * controller moves the VMs. A drain already under way is returned as it is.
     */
    async drain(idOrName: string, by: string | null): Promise<{ host: Host; task: Task }> {
      let task: Task | undefined;
      let fresh = false;
      // Read the drain under way before the transaction: on SQLite a query outside it would wait for it.
      const before = await find(idOrName);
      const current = before.drain_task_id ? await tasks.get(before.drain_task_id).catch(() => undefined) : undefined;
      const running = current && !isFinished(current.state) ? current : undefined;
      const row = await changeSpec(before.id, async (r, trx) => {
        if (r.drain_task_id !== before.drain_task_id) throw new AppError('CONFLICT', `another drain of host ${r.name} was asked for meanwhile`);
        if (running) {
          task = running;
          return r.maintenance ? undefined : { maintenance: 1 };
        }
        if (r.state !== 'ready' || !connected(r)) throw new AppError('HOST_NOT_READY', `host ${r.name} is ${r.state}; only a ready host can be drained`);
        const vmCount = view(r).vmCount;
        task = await tasks.create({ kind: 'drain', targetKind: 'host', targetId: r.id, createdBy: by, params: { vmCount }, message: `moving ${vmCount} VMs` }, trx);
        fresh = true;
        return { maintenance: 1, drain_task_id: task.id };
      });
      if (fresh) await events.emit({ type: 'host.draining', objectKind: 'host', objectId: row.id, message: `host ${row.name} is being drained`, data: { taskId: task!.id } });
      return { host: view(row), task: task! };
    },

    async update(idOrName: string, patch: { labels?: Record<string, string>; zone?: string | null; powerFence?: PowerFenceRequest | null }): Promise<Host> {
      if (patch.powerFence) checkPowerFence(patch.powerFence);
      const row = await changeSpec(idOrName, async () => ({
        ...(patch.labels ? { labels: JSON.stringify(patch.labels) } : {}),
        ...(patch.zone !== undefined ? { zone: patch.zone } : {}),
        ...(patch.powerFence !== undefined ? { power_fence: patch.powerFence ? JSON.stringify({ command: patch.powerFence.command, timeoutS: patch.powerFence.timeoutS ?? 30 }) : null } : {}),
      }));
      const data = { labels: JSON.parse(row.labels), zone: patch.zone, ...(patch.powerFence !== undefined ? { powerFence: patch.powerFence ? { program: patch.powerFence.command[0] } : null } : {}) };
      await events.emit({ type: 'host.updated', objectKind: 'host', objectId: row.id, message: `host ${row.name} updated`, data });
      return view(row);
    },

    /**
     * Leaves maintenance, and lifts a quarantine (the leader's host registry sees the lift in spec and
     * takes the host back); a drain under way is cancelled by the drain controller, which sees this.
     */
    async activate(idOrName: string): Promise<Host> {
      let lifts = false;
      const row = await changeSpec(idOrName, async (r) => {
        lifts = r.state === 'quarantined';
        return { maintenance: 0, ...(lifts ? { quarantine_lifted_at: new Date().toISOString() } : {}) };
      });
      const message = lifts ? `host ${row.name} leaves its quarantine${row.maintenance ? '' : ' and maintenance'}` : `host ${row.name} leaves maintenance`;
      await events.emit({ type: 'host.activated', objectKind: 'host', objectId: row.id, message, data: { quarantineLifted: lifts } });
      return view(row);
    },
  };
}

class LostRace extends Error {}

/** What the schema cannot say: the program is named by an absolute path (no PATH lookup), and has no NUL. */
function checkPowerFence(p: PowerFenceRequest): void {
  if (!p.command[0].startsWith('/')) {
    throw new AppError('VALIDATION_FAILED', `powerFence.command[0] must be an absolute path to a program, not ${JSON.stringify(p.command[0])}`, { field: 'powerFence.command' });
  }
  if (p.command.some((a) => a.includes('\0'))) throw new AppError('VALIDATION_FAILED', 'powerFence.command must not contain NUL characters', { field: 'powerFence.command' });
}

function pickSpec(row: HostRow): Partial<HostRow> {
  return {
    maintenance: row.maintenance, labels: row.labels, zone: row.zone, drain_task_id: row.drain_task_id, power_fence: row.power_fence,
    quarantine_lifted_at: row.quarantine_lifted_at, generation: row.generation, updated_at: row.updated_at,
  };
}
