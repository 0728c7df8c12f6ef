// What the broker's steps share: the stores, the hosts, and one way to write a lease's status.
import type { Histogram } from 'prom-client';
import type { Logger } from '../../lib/logger.ts';
import type { Command } from '../../protocol/messages.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { EventService } from '../features/events/service.ts';
import type { HostRegistry } from '../features/hosts/registry.ts';
import { canTransition } from '../features/memory/model.ts';
import type { LeasePatch, LeaseStore } from '../features/memory/store.ts';
import type { TaskService } from '../features/tasks/service.ts';
import type { VmStore } from '../features/vms/store.ts';
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { CapacityIndex } from '../scheduler/capacity-index.ts';
import type { LeaseRow } from '../store/schema.ts';
import type { Plan } from './plan.ts';
import type { MemoryPolicy } from './policy.ts';
import type { VmTargets } from './vm-targets.ts';

/** What the lease API and the broker both work with. */
export interface MemoryParts {
  leases: LeaseStore;
  vms: VmStore;
  tasks: TaskService;
  events: EventService;
  registry: HostRegistry;
  capacity: CapacityIndex;
  policy: MemoryPolicy;
}

export interface BrokerContext extends MemoryParts {
  log: Logger;
  targets: VmTargets;
  grantSeconds: Histogram;
  /** Asks for a migration of the VM to a host, as a user would; its task. */
  migrate(vmId: string, hostId: string): Promise<{ taskId: string }>;
  /** Restarts the VM (its guest lost memory it had swapped out). */
  restart(vmId: string): Promise<void>;
}

/** Someone wrote the lease since this pass read it: the pass starts over on the new row. */
export class StaleLease extends Error {}

/** A step that cannot go on: the grant is undone and the lease fails with this. */
export class StepFailed extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export const WAIT: ReconcileResult = { requeueAfterMs: 200 };
export const AGAIN: ReconcileResult = { requeueAfterMs: 0 };

export const deadline = (ctx: BrokerContext) => new Date(Date.now() + ctx.policy.stepTimeoutMs).toISOString();
export const pastDeadline = (l: LeaseRow) => l.step_deadline !== null && Date.parse(l.step_deadline) < Date.now();

/** Writes the lease's status by compare-and-set, with the plan and an event for a change of state. */
export async function writeLease(ctx: BrokerContext, l: LeaseRow, patch: LeasePatch & { planned?: Plan }, event?: { message: string; data?: Record<string, unknown> }): Promise<LeaseRow> {
  const { planned, ...rest } = patch;
  const next = rest.state;
  if (next && !canTransition(l.state, next)) throw new Error(`illegal memory lease state change ${l.state} -> ${next} of ${l.id}`);
  const row = await ctx.leases.write(l, { ...rest, ...(planned ? { plan: JSON.stringify(planned) } : {}) });
  if (!row) throw new StaleLease();
  if (next && next !== l.state) {
    await ctx.events.emit({
      type: `memory.lease.${next}`, objectKind: 'memory-lease', objectId: l.id,
      message: event?.message ?? `memory lease ${l.id} of VM ${l.vm_id} is ${next}`,
      data: { vmId: l.vm_id, sizeMiB: l.size_mib, mechanism: row.mechanism, from: l.state, to: next, ...event?.data },
    });
  }
  return row;
}

/** Sends a command to a host and waits for its answer; a host away is a CommandError like any other. */
export function command<T>(ctx: BrokerContext, hostId: string, cmd: Command, timeoutMs = 30_000): Promise<T> {
  const h = ctx.registry.get(hostId);
  if (!h?.connection) return Promise.reject(new CommandError('HOST_DISCONNECTED', `host ${h?.row.name ?? hostId} is not connected`));
  return h.connection.command<T>(cmd, { timeoutMs });
}

export const hostName = (ctx: BrokerContext, id: string | null) => (id ? (ctx.registry.get(id)?.row.name ?? id) : 'no host');
