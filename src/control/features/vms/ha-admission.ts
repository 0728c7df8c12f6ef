// HA admission control: the HA VMs meant to run must still fit when the largest `failures` hosts are gone,
// or the promise that they restart elsewhere is empty. A stopped HA VM reserves nothing, so the check is
// made when an HA VM is to run: created with start, or started. One that would break it is refused with
// 409 and the figures. Read from SQL, so every replica decides the same; made inside the transaction that
// records the VM to run, one such transaction at a time (SQLite has one writer; on PostgreSQL a transaction
// lock), so two requests at once cannot both take the last room.
import { type Kysely, PostgresAdapter, sql } from 'kysely';
import { AppError } from '../../errors.ts';
import type { Database } from '../../store/schema.ts';

export interface HaAdmission {
  /** Host failures to survive; 0 turns the check off. */
  failures: number;
  memoryOvercommit: number;
}

/** Any constant: the key of the PostgreSQL transaction lock that admissions take in turn. */
const ADMISSION_LOCK = 0x6177616e01;

/**
 * Refuses to run HA VM `name` (of `memoryMiB`; `id` when it exists already, a stopped VM being started).
 * `trx` is the transaction that then writes the VM.
 */
export async function admitHaVm(trx: Kysely<Database>, policy: HaAdmission, name: string, memoryMiB: number, id?: string): Promise<void> {
  if (policy.failures <= 0) return;
  if (trx.getExecutor().adapter instanceof PostgresAdapter) await sql`select pg_advisory_xact_lock(${ADMISSION_LOCK})`.execute(trx);
  const hosts = await trx.selectFrom('hosts').select(['memory_mib']).where('state', '=', 'ready').where('maintenance', '=', 0).execute();
  const sizes = hosts.map((h) => Math.floor(h.memory_mib * policy.memoryOvercommit)).sort((a, b) => b - a);
  const left = sizes.slice(policy.failures).reduce((n, s) => n + s, 0);
  const ha = await trx.selectFrom('vms').select((eb) => eb.fn.coalesce(eb.fn.sum<number>('memory_mib'), eb.lit(0)).as('mib'))
    .where('ha', '=', 1).where('deleting', '=', 0).where('desired_power', '=', 'running')
    .$if(id !== undefined, (q) => q.where('id', '!=', id!))
    .executeTakeFirstOrThrow();
  const needed = Number(ha.mib) + memoryMiB;
  if (needed <= left) return;
  const hostsWord = policy.failures === 1 ? 'the largest host' : `the ${policy.failures} largest hosts`;
  throw new AppError('HA_ADMISSION',
    `HA VM ${name} would not survive losing ${hostsWord}: HA VMs would need ${needed} MiB, and the other ${Math.max(0, sizes.length - policy.failures)} ready hosts hold ${left} MiB`,
    { neededMiB: needed, availableMiB: left, hostFailures: policy.failures, readyHosts: sizes.length });
}
