// The host lifecycle and its JSON shape.
import { type Static, Type } from 'typebox';
import type { HostRow } from '../../store/schema.ts';

/**
 * `unreachable`: the agent's connection is gone or its beats stopped, but its lease still runs: its VMs
 * may be running, nothing is moved. `failed`: the lease ran out; its HA VMs have stopped themselves (the
 * host fences itself) and are restarted elsewhere once a margin has passed too. `quarantined`: a failed host
 * that came back after failing too often lately (it flaps): it takes no new VMs and runs no HA VMs until
 * an admin activates it or it has stayed up for a quiet period; it loses its connection without leaving
 * the state, and is failed again if its lease runs out.
 */
export type HostState = 'joining' | 'ready' | 'unreachable' | 'failed' | 'quarantined' | 'fenced';

/** Allowed host state transitions, checked in one place. */
const transitions: Record<HostState, HostState[]> = {
  joining: ['ready', 'unreachable', 'failed'],
  ready: ['unreachable', 'failed', 'fenced'],
  unreachable: ['ready', 'failed', 'fenced'],
  failed: ['ready', 'quarantined', 'fenced'],
  quarantined: ['ready', 'unreachable', 'failed', 'fenced'],
  fenced: ['ready'],
};

export const canTransition = (from: HostState, to: HostState) => from === to || transitions[from].includes(to);

/** The states the API shows: a ready host in maintenance reads as `maintenance`. */
export const hostStates = ['joining', 'ready', 'maintenance', 'unreachable', 'failed', 'quarantined', 'fenced'] as const;

const fenceCommand = Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), {
  minItems: 1, maxItems: 64,
  description: 'argv of the program that powers the host off, run without a shell; the first item is an absolute path. Exit 0 means the host is off. Viewers can read it: keep passwords in a file it reads, not in its arguments.',
});
const fenceTimeout = Type.Integer({ minimum: 1, maximum: 600, description: 'seconds before the command is killed and counted as failed (default 30)' });

/** A command that powers a host off (IPMI, a PDU, a cloud API): an argv run without a shell. */
export const PowerFenceSchema = Type.Object({ command: fenceCommand, timeoutS: fenceTimeout }, { additionalProperties: false });
export type PowerFence = Static<typeof PowerFenceSchema>;
/** The power fence as a request sets it: the timeout may be left out. */
export const PowerFenceInput = Type.Object({ command: fenceCommand, timeoutS: Type.Optional(fenceTimeout) }, { additionalProperties: false });
export type PowerFenceRequest = Static<typeof PowerFenceInput>;

/** The power fence a row holds, or null. */
export function powerFenceOf(r: HostRow): PowerFence | null {
  return r.power_fence ? (JSON.parse(r.power_fence) as PowerFence) : null;
}

export const HostSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: Type.Enum(hostStates),
  maintenance: Type.Boolean(),
  cpus: Type.Integer(),
  memoryMiB: Type.Integer(),
  /** What the host says is available (MemAvailable). */
  memoryFreeMiB: Type.Integer(),
  memoryAllocatedMiB: Type.Integer(),
  /** RAM this host serves to other hosts' VMs (remote memory), and RAM of others its VMs use. */
  memoryLentMiB: Type.Integer(),
  memoryBorrowedMiB: Type.Integer(),
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
  /** Since when the host is quarantined for flapping (null unless it is). */
  quarantinedAt: Type.Union([Type.String(), Type.Null()]),
  /** When the host was declared failed lately (within the flap window, since its last quarantine ended). */
  recentFailures: Type.Array(Type.String()),
  /** The command that powers the host off before HA restarts its VMs elsewhere, or null. */
  powerFence: Type.Union([PowerFenceSchema, Type.Null()]),
  /** The power fence switched the host off during its current failure. */
  poweredOff: Type.Boolean(),
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
  memoryLentMiB: number;
  memoryBorrowedMiB: number;
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
    memoryLentMiB: live?.memoryLentMiB ?? 0,
    memoryBorrowedMiB: live?.memoryBorrowedMiB ?? 0,
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
    quarantinedAt: r.quarantined_at,
    recentFailures: r.recent_failures ? (JSON.parse(r.recent_failures) as string[]) : [],
    powerFence: powerFenceOf(r),
    poweredOff: r.failed_at !== null && r.power_fenced_for === r.failed_at,
    drainTaskId: r.drain_task_id,
    generation: r.generation,
    createdAt: r.created_at,
  };
}
