// The VM phase machine and the VM's JSON shape.
import { type Static, Type } from 'typebox';
import type { VmStatusMsg } from '../../../protocol/messages.ts';
import type { VmRow } from '../../store/schema.ts';
import { Labels } from '../hosts/labels.ts';

export const vmPhases = ['pending', 'scheduling', 'starting', 'running', 'migrating', 'stopping', 'stopped', 'failed', 'unknown', 'deleting'] as const;
export type VmPhase = (typeof vmPhases)[number];

/**
 * Which phase may follow which: every phase change the reconciler, the migration steps and host-failure
 * handling make is here (test/api/phase-changes.test.ts walks them), and any other is refused loudly.
 */
export const transitions: Record<VmPhase, readonly VmPhase[]> = {
  // A host can vanish, or report the VM already running (a kept host), before it was ever placed.
  pending: ['scheduling', 'starting', 'running', 'stopping', 'stopped', 'failed', 'unknown', 'deleting'],
  scheduling: ['pending', 'starting', 'running', 'stopping', 'stopped', 'failed', 'unknown', 'deleting'],
  // Pending again: its host failed and HA restarts it on another one.
  starting: ['pending', 'running', 'stopping', 'stopped', 'failed', 'unknown', 'deleting'],
  running: ['pending', 'starting', 'migrating', 'stopping', 'stopped', 'failed', 'unknown', 'deleting'],
  migrating: ['running', 'stopped', 'failed', 'unknown', 'deleting'],
  // Started again while it was stopping: it boots anew.
  stopping: ['starting', 'running', 'stopped', 'failed', 'unknown', 'deleting'],
  // A returning host may still run a copy of a stopped VM: it is stopped there.
  stopped: ['pending', 'scheduling', 'starting', 'running', 'stopping', 'failed', 'unknown', 'deleting'],
  // A failed VM the host still runs (a boot that timed out) is stopped there when the user asks.
  failed: ['pending', 'scheduling', 'starting', 'running', 'stopping', 'stopped', 'deleting'],
  unknown: ['pending', 'starting', 'running', 'stopping', 'stopped', 'failed', 'deleting'],
  deleting: ['unknown'],
};

export function canTransition(from: VmPhase, to: VmPhase): boolean {
  return from === to || transitions[from].includes(to);
}

/** A phase change the table does not allow: a bug in whoever asked for it, never to be skipped quietly. */
export class IllegalPhaseChange extends Error {
  constructor(readonly vmId: string, readonly from: string, readonly to: string) {
    super(`illegal phase change of VM ${vmId}: ${from} -> ${to}`);
    this.name = 'IllegalPhaseChange';
  }
}

export const NicSchema = Type.Object({
  mode: Type.Union([Type.Literal('user'), Type.Literal('bridge')]),
  bridge: Type.Optional(Type.String({ maxLength: 15, pattern: '^[a-zA-Z0-9_.-]+$' })),
  mac: Type.String(),
});

/** Where a VM's disk lives: see CreateVmBody's `storage`. */
export const storageKinds = ['shared', 'local', 'replicated'] as const;

export const VmSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  cpus: Type.Integer(),
  memoryMiB: Type.Integer(),
  maxMemoryMiB: Type.Integer(),
  memoryActualMiB: Type.Union([Type.Integer(), Type.Null()]),
  /** What its host measures of the running guest (null when it does not run, or on a replica that does not lead). */
  memoryStats: Type.Union([
    Type.Object({
      /** Balloon stats: what the guest says it uses. */
      usedMiB: Type.Union([Type.Integer(), Type.Null()]),
      /** Remote memory plugged in, and the guest's swap on it. */
      remoteMiB: Type.Integer(),
      swapTotalMiB: Type.Union([Type.Integer(), Type.Null()]),
      swapUsedMiB: Type.Union([Type.Integer(), Type.Null()]),
      majorFaults: Type.Union([Type.Integer(), Type.Null()]),
    }),
    Type.Null(),
  ]),
  imageId: Type.Union([Type.String(), Type.Null()]),
  diskGiB: Type.Integer(),
  storage: Type.Enum(storageKinds),
  ha: Type.Boolean(),
  haPriority: Type.Integer(),
  /** Grows with each placement; a host's copy with an older token is stale and is stopped. */
  placementToken: Type.Integer(),
  placementLabels: Labels,
  antiAffinity: Type.Union([Type.String(), Type.Null()]),
  nics: Type.Array(NicSchema),
  powerState: Type.Union([Type.Literal('running'), Type.Literal('stopped')]),
  hostId: Type.Union([Type.String(), Type.Null()]),
  targetHostId: Type.Union([Type.String(), Type.Null()]),
  phase: Type.Enum(vmPhases),
  message: Type.Union([Type.String(), Type.Null()]),
  generation: Type.Integer(),
  observedGeneration: Type.Integer(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});
export type Vm = Static<typeof VmSchema>;

export const CreateVmBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-zA-Z0-9][a-zA-Z0-9._-]*$' }),
    cpus: Type.Integer({ minimum: 1, maximum: 256 }),
    memoryMiB: Type.Integer({ minimum: 16, maximum: 4 * 1024 * 1024 }),
    maxMemoryMiB: Type.Optional(Type.Integer({ minimum: 16, maximum: 4 * 1024 * 1024 })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'image id or name' })),
    diskGiB: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
    storage: Type.Optional(Type.Enum(storageKinds, { description: 'where the disk lives: the shared pool; the host (copied along on migration); or the host with a synchronous copy on a second host, where HA restarts the VM when its host fails' })),
    ha: Type.Optional(Type.Boolean({ description: 'restart the VM on another host when its host fails' })),
    haPriority: Type.Optional(Type.Integer({ minimum: -1000, maximum: 1000, description: 'HA VMs of a failed host restart highest first' })),
    placementLabels: Type.Optional(Labels),
    antiAffinity: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
    nics: Type.Optional(
      Type.Array(
        Type.Object(
          { mode: Type.Union([Type.Literal('user'), Type.Literal('bridge')]), bridge: Type.Optional(Type.String({ maxLength: 15, pattern: '^[a-zA-Z0-9_.-]+$' })) },
          { additionalProperties: false },
        ),
        { maxItems: 8 },
      ),
    ),
    start: Type.Optional(Type.Boolean({ default: true, description: 'start the VM once created' })),
  },
  { additionalProperties: false },
);
export type CreateVm = Static<typeof CreateVmBody>;

/** The memory figures of a VM's live report. */
export function memoryStatsOf(seen: VmStatusMsg | undefined): Vm['memoryStats'] {
  if (!seen || (seen.state !== 'running' && seen.state !== 'paused')) return null;
  return {
    usedMiB: seen.memoryUsedMiB ?? null,
    remoteMiB: (seen.remoteMemory ?? []).reduce((n, d) => n + (d.state === 'failed' ? 0 : d.sizeMiB), 0),
    swapTotalMiB: seen.swapTotalMiB ?? null,
    swapUsedMiB: seen.swapUsedMiB ?? null,
    majorFaults: seen.majorFaults ?? null,
  };
}

export function vmFromRow(r: VmRow, seen?: VmStatusMsg): Vm {
  return {
    id: r.id,
    name: r.name,
    cpus: r.cpus,
    memoryMiB: r.memory_mib,
    maxMemoryMiB: r.max_memory_mib,
    memoryActualMiB: r.memory_actual_mib,
    memoryStats: memoryStatsOf(seen),
    imageId: r.image_id,
    diskGiB: r.disk_gib,
    storage: r.replicated ? 'replicated' : r.local_disk ? 'local' : 'shared',
    ha: r.ha === 1,
    haPriority: r.ha_priority,
    placementToken: r.placement_token,
    placementLabels: JSON.parse(r.placement_labels) as Record<string, string>,
    antiAffinity: r.anti_affinity,
    nics: JSON.parse(r.nics) as Vm['nics'],
    powerState: r.desired_power,
    hostId: r.host_id,
    targetHostId: r.target_host_id,
    phase: r.phase as VmPhase,
    message: r.message,
    generation: r.generation,
    observedGeneration: r.observed_generation,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
