// awan task: recent long operations, and following one to its end.
import type { Command } from 'commander';
import type { Host } from '../../control/features/hosts/model.ts';
import type { Task } from '../../control/features/tasks/service.ts';
import type { Vm } from '../../control/features/vms/model.ts';
import { type ApiClient, type Page, queryString, seg } from './client.ts';
import { ago, orDash, printJson, printTable } from './output.ts';
import { reportOutcome, watchTask } from './progress.ts';
import { type ClientOptions, client, jsonOption, positiveInt, run } from './shared.ts';

/** Tasks name their target by id; people know VMs and hosts by name. Deleted targets keep their id. */
async function targetNames(api: ApiClient, tasks: Task[]): Promise<Map<string, string>> {
  const kinds = new Set(tasks.map((t) => t.targetKind));
  const [vms, hosts] = await Promise.all([
    kinds.has('vm') ? api.all<Vm>('/api/v1/vms') : [],
    kinds.has('host') ? api.get<Page<Host>>('/api/v1/hosts').then((p) => p.items) : [],
  ]);
  return new Map([...vms, ...hosts].map((x) => [x.id, x.name]));
}

export function registerTasks(program: Command): void {
  const task = program.command('task').description('long operations: list and follow them');

  jsonOption(task.command('list').description('list tasks, newest first'))
    .option('--state <state>', 'only tasks in this state (queued, running, succeeded, failed, cancelled)')
    .option('--kind <kind>', 'only tasks of this kind (create, start, stop, migrate, …)')
    .option('--target <id>', 'only tasks on this object id')
    .option('--limit <n>', 'how many', positiveInt, 20)
    .action(run(async (o: ClientOptions & { state?: string; kind?: string; target?: string; limit: number }) => {
      const api = client(o);
      const page = await api.get<Page<Task>>(`/api/v1/tasks${queryString({ state: o.state, kind: o.kind, targetId: o.target, limit: String(o.limit) })}`);
      if (o.json) return printJson(page);
      const names = await targetNames(api, page.items);
      printTable(
        ['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'CREATED', 'MESSAGE'],
        page.items.map((t) => [t.id, t.kind, `${t.targetKind}/${names.get(t.targetId) ?? t.targetId}`, t.state, `${t.progress}%`, ago(t.createdAt), orDash(t.error ? `${t.error.code}: ${t.error.message}` : t.message)]),
        'no tasks',
      );
    }));

  jsonOption(task.command('show <id>').description('show one task'))
    .action(run(async (id: string, o: ClientOptions) => {
      const t = await client(o).get<Task>(`/api/v1/tasks/${seg(id)}`);
      if (o.json) return printJson(t);
      printTable(['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'MESSAGE'], [[t.id, t.kind, `${t.targetKind}/${t.targetId}`, t.state, `${t.progress}%`, orDash(t.message)]]);
      if (t.error) process.stdout.write(`error ${t.error.code}: ${t.error.message}\n`);
    }));

  jsonOption(task.command('watch <id>').description('follow a task to its end; exit 0 if it succeeded, 1 if not'))
    .action(run(async (id: string, o: ClientOptions) => {
      const api = client(o);
      if (!o.json) return reportOutcome(await watchTask(api, id));
      // With --json the progress lines would spoil the document: wait quietly, print the final task.
      const t = await watchTask(api, id, { out: devNull, tty: false });
      printJson(t);
      if (t.state !== 'succeeded') process.exitCode = 1;
    }));

  task.command('cancel <id>').description('cancel a running migration; the VM stays where it runs')
    .action(run(async (id: string, o: ClientOptions) => {
      const t = await client(o).post<Task>(`/api/v1/tasks/${seg(id)}/cancel`);
      process.stdout.write(`task ${t.id} cancel requested\n`);
    }));
}

const devNull = { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream;
