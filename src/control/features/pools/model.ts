// The pool JSON and the body that registers a shared pool.
import { type Static, Type } from 'typebox';
import type { PoolRow } from '../../store/schema.ts';

export const poolTypes = ['local', 'shared'] as const;

export const PoolSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  type: Type.Enum(poolTypes, { description: '`local`: one host\'s own disks; `shared`: a directory every host mounts' }),
  path: Type.String(),
  hostId: Type.Union([Type.String(), Type.Null()], { description: 'the host of a local pool' }),
  capacityMiB: Type.Union([Type.Integer(), Type.Null()], { description: 'as an agent last reported it; null until one has' }),
  freeMiB: Type.Union([Type.Integer(), Type.Null()]),
  reportedAt: Type.Union([Type.String(), Type.Null()]),
  /** Connected hosts that report they reach the pool. */
  hosts: Type.Array(Type.String()),
  createdAt: Type.String(),
});
export type Pool = Static<typeof PoolSchema>;

export const CreatePoolBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-zA-Z0-9][a-zA-Z0-9._-]*$' }),
    type: Type.Enum(poolTypes),
    path: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
  },
  { additionalProperties: false },
);
export type CreatePool = Static<typeof CreatePoolBody>;

export const poolFromRow = (r: PoolRow, hosts: string[]): Pool => ({
  id: r.id,
  name: r.name,
  type: r.type,
  path: r.path,
  hostId: r.host_id,
  capacityMiB: r.capacity_mib,
  freeMiB: r.free_mib,
  reportedAt: r.reported_at,
  hosts,
  createdAt: r.created_at,
});
