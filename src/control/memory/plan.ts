// What the broker did for a lease and has yet to undo, kept in the lease's status (JSON) so that a restart
// of control carries on from the step it was at. Every step is idempotent: it is done again after a restart.
import type { ReplicaTargetMsg } from '../../protocol/messages.ts';
import type { LeaseRow } from '../store/schema.ts';

export type GrantStep = 'migrate' | 'shrink' | 'grow' | 'export' | 'attach' | 'done';
export type PermanentStep = 'decide' | 'migrate' | 'grow' | 'commit';

/** A neighbour ballooned down to make room (reclaim), and the target it had. */
export interface Reclaimed {
  vmId: string;
  previousTargetMiB: number | null;
  toMiB: number;
}

export interface Plan {
  step: GrantStep;
  /** The VM's memory target before the lease: a return puts it back. */
  previousTargetMiB: number | null;
  /** The target the lease gives the VM (grow, reclaim, migrate). */
  targetMiB?: number;
  neighbours?: Reclaimed[];
  /** Remote memory: the export on the donor and the VM's device slot. */
  remote?: { slot: number; exportName: string; target?: ReplicaTargetMsg };
  /** Migrate: where the VM goes, and the migration's task. */
  toHostId?: string;
  migrateTaskId?: string;
  /** Why the grant is being undone (the lease then ends failed). */
  failure?: { code: string; message: string };
  permanent?: { step: PermanentStep; toHostId?: string; migrateTaskId?: string };
}

export const planOf = (r: LeaseRow): Plan => (r.plan ? (JSON.parse(r.plan) as Plan) : { step: 'done', previousTargetMiB: null });
