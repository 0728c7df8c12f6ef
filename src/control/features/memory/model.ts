// The memory lease: its lifecycle, its JSON shape and the request that makes one.
import { type Static, Type } from 'typebox';
import type { LeaseRow, LeaseState } from '../../store/schema.ts';

export const leaseStates = ['requested', 'granting', 'active', 'returning', 'returned', 'failed'] as const satisfies readonly LeaseState[];
export const leaseKinds = ['temporary', 'permanent'] as const;
export const leaseMechanisms = ['reclaim', 'grow', 'remote', 'migrate'] as const;
export const askedMechanisms = ['auto', ...leaseMechanisms] as const;

/**
 * Which state may follow which. `returning` also undoes a grant that failed half-way, and then ends in
 * `failed`; an active lease fails outright when its donor died with the guest's pages.
 */
const transitions: Record<LeaseState, readonly LeaseState[]> = {
  requested: ['granting', 'returning', 'failed'],
  granting: ['active', 'returning', 'failed'],
  active: ['returning', 'failed'],
  returning: ['returned', 'failed'],
  returned: [],
  failed: [],
};

export const canTransition = (from: LeaseState, to: LeaseState) => from === to || transitions[from].includes(to);
export const isFinal = (s: LeaseState) => s === 'returned' || s === 'failed';

export const LeaseSchema = Type.Object({
  id: Type.String(),
  vmId: Type.String(),
  borrowerHostId: Type.Union([Type.String(), Type.Null()]),
  donorHostId: Type.Union([Type.String(), Type.Null()]),
  sizeMiB: Type.Integer(),
  kind: Type.Enum(leaseKinds),
  /** What the broker chose (null until it has); `requestedMechanism` is what was asked. */
  mechanism: Type.Union([Type.Enum(leaseMechanisms), Type.Null()]),
  requestedMechanism: Type.Enum(askedMechanisms),
  state: Type.Enum(leaseStates),
  message: Type.Union([Type.String(), Type.Null()]),
  ttlS: Type.Union([Type.Integer(), Type.Null()]),
  expiresAt: Type.Union([Type.String(), Type.Null()]),
  /** `api`: someone asked for it; `policy`: the broker acted on memory pressure. */
  origin: Type.Union([Type.Literal('api'), Type.Literal('policy')]),
  taskId: Type.Union([Type.String(), Type.Null()]),
  grantedAt: Type.Union([Type.String(), Type.Null()]),
  endedAt: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});
export type Lease = Static<typeof LeaseSchema>;

/** 30 days: a loan meant to last longer is a permanent one. */
export const MAX_TTL_S = 30 * 24 * 3600;

export const BorrowBody = Type.Object(
  {
    vmId: Type.String({ minLength: 1, maxLength: 128, description: 'the VM that borrows (id or name)' }),
    sizeMiB: Type.Integer({ minimum: 1, maximum: 4 * 1024 * 1024 }),
    kind: Type.Enum(leaseKinds, { description: 'temporary: given back when it expires or is returned; permanent: becomes part of the VM' }),
    ttlS: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TTL_S, description: 'seconds until a temporary lease is given back by itself' })),
    mechanism: Type.Optional(Type.Enum(askedMechanisms, { description: 'auto (the default) tries the cheapest that applies: grow, reclaim, remote, migrate' })),
    donorHostId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'the host that lends (remote; id or name)' })),
  },
  { additionalProperties: false },
);
export type Borrow = Static<typeof BorrowBody>;

export function leaseFromRow(r: LeaseRow): Lease {
  return {
    id: r.id,
    vmId: r.vm_id,
    borrowerHostId: r.borrower_host_id,
    donorHostId: r.donor_host_id,
    sizeMiB: r.size_mib,
    kind: r.kind,
    mechanism: r.mechanism,
    requestedMechanism: r.mechanism_asked,
    state: r.state,
    message: r.message,
    ttlS: r.ttl_s,
    expiresAt: r.expires_at,
    origin: r.origin,
    taskId: r.task_id,
    grantedAt: r.granted_at,
    endedAt: r.ended_at,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
