// One active task per VM, held by the database rather than by a check-then-insert that two requests can
// both pass. Names of VMs, images, hosts and users are unique since the first schema.
import { type Kysely, sql } from 'kysely';

const active = ['queued', 'running'];

export async function up(db: Kysely<any>): Promise<void> {
  // An older control could leave two unfinished tasks on one VM after such a race. Keep the one that
  // reflects the latest wish (a delete over anything, else the newest) and fail the others with the reason,
  // so the index can be built and no task is left running that nothing drives.
  const rows: { id: string; kind: string; target_id: string; created_at: string }[] = await db
    .selectFrom('tasks')
    .select(['id', 'kind', 'target_id', 'created_at'])
    .where('target_kind', '=', 'vm')
    .where('state', 'in', active)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  const byVm = new Map<string, typeof rows>();
  for (const r of rows) byVm.set(r.target_id, [...(byVm.get(r.target_id) ?? []), r]);
  const now = new Date().toISOString();
  for (const tasks of byVm.values()) {
    if (tasks.length < 2) continue;
    const keep = [...tasks].reverse().find((t) => t.kind === 'delete') ?? tasks[tasks.length - 1];
    const others = tasks.filter((t) => t !== keep).map((t) => t.id);
    await db
      .updateTable('tasks')
      .set({
        state: 'failed',
        error_code: 'SUPERSEDED',
        error_message: `superseded by the later ${keep.kind} task ${keep.id} on the same VM`,
        message: `superseded by the later ${keep.kind} task ${keep.id} on the same VM`,
        finished_at: now,
        updated_at: now,
      })
      .where('id', 'in', others)
      .execute();
  }
  // A partial unique index: both SQLite (3.8+) and PostgreSQL build it from the same statement.
  await sql`create unique index tasks_one_active_per_vm on tasks (target_id) where target_kind = 'vm' and state in ('queued', 'running')`.execute(db);
}
