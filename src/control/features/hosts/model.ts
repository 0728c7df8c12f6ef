// The host lifecycle and its JSON shape.
import { type Static, Type } from 'typebox';
import type { HostRow } from '../../store/schema.ts';

/**
 * `unreachable`: the agent's connection is gone or its beats stopped, but its lease still runs: its VMs
 * may be running, nothing is moved. `failed`: the lease ran out; its HA VMs have stopped themselves (the
 * host fences itself) and are restarted elsewhere once a margin has passed too.
 */
export type HostState = 'joining' | 'ready' | 'unreachable' | 'failed' | 'fenced';

/** Allowed host state transitions, checked in one place. */
const transitions: Record<HostState, HostState[]> = {
  joining: ['ready', 'unreachable', 'failed'],
  ready: ['unreachable', 'failed', 'fenced'],
  unreachable: ['ready', 'failed', 'fenced'],
  failed: ['ready', 'fenced'],
  fenced: ['ready'],
};

export const canTransition = (from: HostState, to: HostState) => from === to || transitions[from].includes(to);

/** The states the API shows: a ready host in maintenance reads as `maintenance`. */
export const hostStates = ['joining', 'ready', 'maintenance', 'unreachable', 'failed', 'fenced'] as const;

export const HostSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: Type.Enum(hostStates),
  maintenance: Type.Boolean(),
  cpus: Type.Integer(),
  memoryMiB: Type.Integer(),
  memoryFreeMiB: Type.Integer(),
  memoryAllocatedMiB: Type.Integer(),
  vmCount: Type.Integer(),
  address: Type.String(),
  driver: Type.String(),
  accelerator: Type.Union([Type.String(), Type.Null()]),
  capabilities: Type.Array(Type.String()),
  labels: Type.Record(Type.String(), Type.String()),
  zone: Type.Union([Type.String(), Type.Null()]),
  connected: Type.Boolean(),
  lastHeartbeatAt: Type.Union([Type.String(), Type.Null()]),
  /** Until when the host may run its HA VMs without another heartbeat. */
  leaseExpiresAt: Type.Union([Type.String(), Type.Null()]),
  /** Since when the host is failed (null unless it is). */
  failedAt: Type.Union([Type.String(), Type.Null()]),
  /** Why the host is in its state. */
  stateReason: Type.Union([Type.String(), Type.Null()]),
  /** The task of the last drain asked for (it says whether the drain is under way, done or failed). */
  drainTaskId: Type.Union([Type.String(), Type.Null()]),
  generation: Type.Integer(),
  createdAt: Type.String(),
});
export type Host = Static<typeof HostSchema>;

/** What the API shows: ready hosts in maintenance read as `maintenance`. */
export function publicState(state: string, maintenance: boolean): Host['state'] {
  return (state === 'ready' && maintenance ? 'maintenance' : state) as Host['state'];
}

/** Live data the leader holds for a host; without it the row's status columns (SQL) are shown. */
export interface LiveView {
  connected: boolean;
  lastHeartbeatAt: string | null;
  memoryFreeMiB: number;
  allocatedMiB: number;
  vmCount: number;
  leaseExpiresAt: string | null;
}

export function hostFromRow(r: HostRow, live?: LiveView): Host {
  return {
    id: r.id,
    name: r.name,
    state: publicState(r.state, r.maintenance === 1),
    maintenance: r.maintenance === 1,
    cpus: r.cpus,
    memoryMiB: r.memory_mib,
    memoryFreeMiB: live?.memoryFreeMiB ?? r.memory_free_mib,
    memoryAllocatedMiB: live?.allocatedMiB ?? r.memory_allocated_mib,
    vmCount: live?.vmCount ?? r.vm_count,
    address: r.address,
    driver: r.driver,
    accelerator: r.accelerator,
    capabilities: JSON.parse(r.capabilities) as string[],
    labels: JSON.parse(r.labels) as Record<string, string>,
    zone: r.zone,
    connected: live ? live.connected : r.connected === 1,
    lastHeartbeatAt: live ? (live.lastHeartbeatAt ?? r.last_heartbeat_at) : r.last_heartbeat_at,
    leaseExpiresAt: live ? live.leaseExpiresAt : r.lease_expires_at,
    failedAt: r.failed_at,
    stateReason: r.state_reason,
    drainTaskId: r.drain_task_id,
    generation: r.generation,
    createdAt: r.created_at,
  };
}
