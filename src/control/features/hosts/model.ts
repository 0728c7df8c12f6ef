// The host lifecycle and its JSON shape.
import { type Static, Type } from 'typebox';
import type { HostRow } from '../../store/schema.ts';

export type HostState = 'joining' | 'ready' | 'unreachable' | 'fenced';

/** Allowed host state transitions, checked in one place. */
const transitions: Record<HostState, HostState[]> = {
  joining: ['ready', 'unreachable'],
  ready: ['unreachable', 'fenced'],
  unreachable: ['ready', 'fenced'],
  fenced: ['ready'],
};

export const canTransition = (from: HostState, to: HostState) => from === to || transitions[from].includes(to);

/** The states the API shows: a ready host in maintenance reads as `maintenance`. */
export const hostStates = ['joining', 'ready', 'maintenance', 'unreachable', 'fenced'] as const;

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
    drainTaskId: r.drain_task_id,
    generation: r.generation,
    createdAt: r.created_at,
  };
}
