// Task routes: list and follow long operations.
import { Type } from 'typebox';
import { AppError } from '../../errors.ts';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import { OneOf } from '../../http/choice.ts';
import { type TaskService, isFinished, taskKinds, taskStates } from './service.ts';

export const TaskSchema = Type.Object({
  id: Type.String(),
  kind: Type.String(),
  targetKind: Type.String(),
  targetId: Type.String(),
  state: Type.Enum(taskStates),
  progress: Type.Integer(),
  message: Type.Union([Type.String(), Type.Null()]),
  error: Type.Union([Type.Object({ code: Type.String(), message: Type.String() }), Type.Null()]),
  result: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]),
  params: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]),
  createdBy: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  finishedAt: Type.Union([Type.String(), Type.Null()]),
  updatedAt: Type.String(),
});

export function taskRoutes(app: App, tasks: TaskService, cancel: (taskId: string) => Promise<boolean>): void {
  app.get('/api/v1/tasks', {
    config: { role: 'viewer' },
    schema: {
      tags: ['tasks'],
      querystring: Type.Object({ ...PageQuery, state: Type.Optional(OneOf(taskStates)), targetId: Type.Optional(Type.String()), kind: Type.Optional(OneOf(taskKinds)) }, { additionalProperties: false }),
      response: { 200: PageOf(TaskSchema), ...errors },
    },
  }, (req) => tasks.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, state: req.query.state, targetId: req.query.targetId, kind: req.query.kind }));

  app.get('/api/v1/tasks/:id', {
    config: { role: 'viewer' },
    schema: { tags: ['tasks'], params: IdParams, response: { 200: TaskSchema, ...errors } },
  }, (req) => tasks.get(req.params.id));

  app.post('/api/v1/tasks/:id/cancel', {
    config: { role: 'operator' },
    schema: { tags: ['tasks'], description: 'Cancels a running migration; the VM keeps running where it was.', params: IdParams, response: { 202: TaskSchema, ...errors } },
  }, async (req, reply) => {
    requireRole(req.principal, 'operator');
    const task = await tasks.get(req.params.id);
    if (isFinished(task.state)) throw new AppError('INVALID_STATE', `task ${task.id} already ${task.state}`);
    if (!(await cancel(task.id))) throw new AppError('UNSUPPORTED', `a ${task.kind} task cannot be cancelled; only migrations can`);
    return reply.code(202).send(await tasks.get(task.id));
  });
}
