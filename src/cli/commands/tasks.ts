// awan task: recent long operations, and following one to its end.
import type { Command } from 'commander';
import type { Task } from '../../control/features/tasks/service.ts';
import { type ApiClient, type Page, queryString, seg } from './client.ts';
import { namesOf, withNames } from './names.ts';
import { ago, orDash, printJson, printTable } from './output.ts';
import { quietly, watchTask } from './progress.ts';
import { type ClientOptions, client, jsonOption, positiveInt, reportError, reportOutcome, run, taskError } from './shared.ts';

/** What a task is about and how it went, with names for ids; deleted targets keep their id. */
async function describeTasks(api: ApiClient, tasks: Task[]): Promise<{ target: string; message: string }[]> {
  const names = await namesOf(api, tasks.map((t) => t.targetId));
  return Promise.all(tasks.map(async (t) => ({
    target: `${t.targetKind}/${names.get(t.targetId) ?? t.targetId}`,
    message: orDash(await withNames(api, t.error ? `${t.error.code}: ${t.error.message}` : t.message ?? '')),
  })));
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
      const described = await describeTasks(api, page.items);
      printTable(
        ['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'CREATED', 'MESSAGE'],
        page.items.map((t, i) => [t.id, t.kind, described[i].target, t.state, `${t.progress}%`, ago(t.createdAt), described[i].message]),
        'no tasks',
      );
    }));

  jsonOption(task.command('show <id>').description('show one task'))
    .action(run(async (id: string, o: ClientOptions) => {
      const api = client(o);
      const t = await api.get<Task>(`/api/v1/tasks/${seg(id)}`);
      if (o.json) return printJson(t);
      const [d] = await describeTasks(api, [{ ...t, error: null }]);
      printTable(['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'MESSAGE'], [[t.id, t.kind, d.target, t.state, `${t.progress}%`, d.message]]);
      if (t.error) process.stdout.write(`error ${t.error.code}: ${await withNames(api, t.error.message)}\n`);
    }));

  jsonOption(task.command('watch <id>').description('follow a task to its end; exit 0 if it succeeded, 1 if not'))
    .action(run(async (id: string, o: ClientOptions) => {
      const api = client(o);
      if (!o.json) return reportOutcome(api, await watchTask(api, id));
      // With --json the progress lines would spoil the document: wait quietly, print the final task.
      const t = await watchTask(api, id, quietly);
      printJson(t);
      if (t.state !== 'succeeded') reportError(await taskError(api, t), { json: true });
    }));

  jsonOption(task.command('cancel <id>').description('cancel a running migration; the VM stays where it runs'))
    .action(run(async (id: string, o: ClientOptions) => {
      const t = await client(o).post<Task>(`/api/v1/tasks/${seg(id)}/cancel`);
      if (o.json) return printJson(t);
      process.stdout.write(`task ${t.id} cancel requested\n`);
    }));
}
