// Memory lease routes: borrow, list, show, return and make permanent; requests answer 202 with a task.
import { Type } from 'typebox';
import { OneOf } from '../../http/choice.ts';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import { TaskSchema } from '../tasks/routes.ts';
import { BorrowBody, LeaseSchema, leaseStates } from './model.ts';
import type { MemoryService } from './service.ts';

const Accepted = Type.Object({ lease: LeaseSchema, task: TaskSchema });
const NoBody = Type.Optional(Type.Union([Type.Object({}, { additionalProperties: false }), Type.Null()]));

export function memoryRoutes(app: App, memory: MemoryService): void {
  const tags = ['memory'];
  app.get('/api/v1/memory/leases', {
    config: { role: 'viewer' },
    schema: {
      tags,
      querystring: Type.Object({ ...PageQuery, vm: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'VM id or name' })), state: Type.Optional(OneOf(leaseStates)) }, { additionalProperties: false }),
      response: { 200: PageOf(LeaseSchema), ...errors },
    },
  }, (req) => memory.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, vmId: req.query.vm, state: req.query.state }));

  app.get('/api/v1/memory/leases/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: LeaseSchema, ...errors } } }, (req) => memory.get(req.params.id));

  app.post('/api/v1/memory/leases', {
    config: { role: 'operator' },
    schema: { tags, description: 'A VM borrows memory, for a while (temporary) or for good (permanent).', body: BorrowBody, response: { 202: Accepted, ...errors } },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await memory.borrow(req.body, p.userId));
  });

  app.post('/api/v1/memory/leases/:id/return', { config: { role: 'operator' }, schema: { tags, params: IdParams, body: NoBody, response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await memory.return(req.params.id, p.userId));
  });

  app.post('/api/v1/memory/leases/:id/make-permanent', { config: { role: 'operator' }, schema: { tags, params: IdParams, body: NoBody, response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await memory.makePermanent(req.params.id, p.userId));
  });
}
