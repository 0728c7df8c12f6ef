// Task routes: list and follow long operations.
import { Type } from 'typebox';
import { type App, IdParams, errors } from '../../http/types.ts';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import type { TaskService } from './service.ts';

export const TaskSchema = Type.Object({
  id: Type.String(),
  kind: Type.String(),
  targetKind: Type.String(),
  targetId: Type.String(),
  state: Type.Enum(['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const),
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

export function taskRoutes(app: App, tasks: TaskService): void {
  app.get('/api/v1/tasks', {
    schema: {
      tags: ['tasks'],
      querystring: Type.Object({ ...PageQuery, state: Type.Optional(Type.String()), targetId: Type.Optional(Type.String()), kind: Type.Optional(Type.String()) }, { additionalProperties: false }),
      response: { 200: PageOf(TaskSchema), ...errors },
    },
  }, (req) => tasks.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, state: req.query.state, targetId: req.query.targetId, kind: req.query.kind }));

  app.get('/api/v1/tasks/:id', {
    schema: { tags: ['tasks'], params: IdParams, response: { 200: TaskSchema, ...errors } },
  }, (req) => tasks.get(req.params.id));
}
