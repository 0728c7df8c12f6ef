// The volume JSON: spec (size, deleting) as the API recorded it, status as the volume controller saw it.
import { type Static, Type } from 'typebox';
import type { VolumeRow } from '../../store/schema.ts';

export const replicaStates = ['placing', 'rebuilding', 'synced', 'degraded'] as const;
export const volumeStates = ['creating', 'ready', 'growing', 'deleting', 'failed'] as const;

export const VolumeSchema = Type.Object({
  id: Type.String(),
  name: Type.String({ description: 'the volume\'s place inside its pool' }),
  poolId: Type.String(),
  vmId: Type.Union([Type.String(), Type.Null()]),
  format: Type.Enum(['qcow2', 'raw'] as const),
  backingPath: Type.Union([Type.String(), Type.Null()]),
  sizeMiB: Type.Integer({ description: 'the size asked for' }),
  actualSizeMiB: Type.Union([Type.Integer(), Type.Null()], { description: 'the size its host last reported; null until made' }),
  state: Type.Enum(volumeStates),
  deleting: Type.Boolean(),
  message: Type.Union([Type.String(), Type.Null()]),
  replicated: Type.Boolean({ description: 'the disk of a VM on replicated storage: a synchronous copy is kept on a second host' }),
  replica: Type.Union([
    Type.Object({
      hostId: Type.String({ description: 'the host that holds the copy' }),
      state: Type.Enum(replicaStates, { description: '`placing`: being set up; `rebuilding`: copying; `synced`: every write reaches both; `degraded`: the copy stopped' }),
      message: Type.Union([Type.String(), Type.Null()]),
      changedAt: Type.Union([Type.String(), Type.Null()]),
    }),
    Type.Null(),
  ], { description: 'the copy of a replicated volume; null while it has none' }),
  generation: Type.Integer(),
  observedGeneration: Type.Integer(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});
export type Volume = Static<typeof VolumeSchema>;

export const volumeFromRow = (r: VolumeRow): Volume => ({
  id: r.id,
  name: r.name,
  poolId: r.pool_id,
  vmId: r.vm_id,
  format: r.format,
  backingPath: r.backing_path,
  sizeMiB: r.size_mib,
  actualSizeMiB: r.actual_size_mib,
  state: r.state,
  deleting: r.deleting === 1,
  message: r.message,
  replicated: r.replicated === 1,
  replica: r.replica_host_id && r.replica_state
    ? { hostId: r.replica_host_id, state: r.replica_state, message: r.replica_message, changedAt: r.replica_changed_at }
    : null,
  generation: r.generation,
  observedGeneration: r.observed_generation,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});
