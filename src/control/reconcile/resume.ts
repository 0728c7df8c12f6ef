// After a restart: every task an earlier process left unfinished either resumes (the VM reconciler takes
// it up again from the desired state) or fails with the reason it cannot go on.
import type { Kysely } from 'kysely';
import type { Logger } from '../../lib/logger.ts';
import type { HostStore } from '../features/hosts/store.ts';
import type { TaskService } from '../features/tasks/service.ts';
import type { Database } from '../store/schema.ts';

/** Kinds driven by desired state: the reconciler can pick them up where they stopped. */
const resumable = new Set(['create', 'start', 'stop', 'delete', 'migrate']);

export async function resumeTasks({ db, tasks, log, hosts }: { db: Kysely<Database>; tasks: TaskService; log: Logger; hosts?: HostStore }): Promise<void> {
  for (const task of await tasks.unfinished()) {
    if (task.kind === 'drain' && task.targetKind === 'host' && hosts) {
      // A drain is in its host's spec: the drain controller carries on with it.
      const host = await hosts.get(task.targetId);
      if (host?.drain_task_id === task.id && host.maintenance === 1) {
        log.info({ taskId: task.id, hostId: host.id }, 'resuming a drain');
        continue;
      }
    }
    if (task.targetKind === 'memory-lease') {
      // A lease's state and plan are in SQL: the memory broker takes it up where it stopped.
      const lease = await db.selectFrom('memory_leases').select(['id', 'task_id']).where('id', '=', task.targetId).executeTakeFirst();
      if (lease?.task_id === task.id) {
        log.info({ taskId: task.id, leaseId: lease.id }, 'resuming a memory lease');
        continue;
      }
    }
    if (task.targetKind === 'vm' && resumable.has(task.kind)) {
      const vm = await db.selectFrom('vms').select('id').where('id', '=', task.targetId).executeTakeFirst();
      if (vm) {
        // The controllers' first resync looks at every VM, this one included.
        log.info({ taskId: task.id, kind: task.kind, vmId: vm.id }, 'resuming a task');
      } else if (task.kind === 'delete') {
        await tasks.succeed(task.id, 'deleted');
      } else {
        await tasks.fail(task.id, 'VM_DELETED', 'the VM no longer exists');
      }
      continue;
    }
    await tasks.fail(task.id, 'INTERRUPTED', `control restarted before the ${task.kind} finished; run it again`);
  }
}
