// VM routes: CRUD and the power and placement actions; mutating calls answer 202 with a task.
import { Type } from 'typebox';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import { TaskSchema } from '../tasks/routes.ts';
import { OneOf } from '../../http/choice.ts';
import { CreateVmBody, VmSchema, vmPhases } from './model.ts';
import type { VmService } from './service.ts';

const Accepted = Type.Object({ vm: VmSchema, task: TaskSchema });
const NoBody = Type.Union([Type.Object({}, { additionalProperties: false }), Type.Null()]);

export function vmRoutes(app: App, vms: VmService): void {
  const tags = ['vms'];
  app.get('/api/v1/vms', {
    config: { role: 'viewer' },
    schema: {
      tags,
      querystring: Type.Object(
        { ...PageQuery, host: Type.Optional(Type.String({ description: 'host id' })), phase: Type.Optional(OneOf(vmPhases)), name: Type.Optional(Type.String({ maxLength: 63 })) },
        { additionalProperties: false },
      ),
      response: { 200: PageOf(VmSchema), ...errors },
    },
  }, (req) => vms.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, hostId: req.query.host, phase: req.query.phase, name: req.query.name }));

  app.get('/api/v1/vms/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: VmSchema, ...errors } } }, (req) => vms.get(req.params.id));

  app.post('/api/v1/vms', { config: { role: 'operator' }, schema: { tags, body: CreateVmBody, response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.create(req.body, p.userId));
  });

  app.post('/api/v1/vms/:id/start', { config: { role: 'operator' }, schema: { tags, params: IdParams, body: Type.Optional(NoBody), response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.start(req.params.id, p.userId));
  });

  app.post('/api/v1/vms/:id/stop', {
    config: { role: 'operator' },
    schema: { tags, params: IdParams, body: Type.Optional(Type.Union([Type.Object({ force: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), Type.Null()])), response: { 202: Accepted, ...errors } },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.stop(req.params.id, req.body?.force ?? false, p.userId));
  });

  app.post('/api/v1/vms/:id/reboot', { config: { role: 'operator' }, schema: { tags, params: IdParams, body: Type.Optional(NoBody), response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.reboot(req.params.id, p.userId));
  });

  app.post('/api/v1/vms/:id/migrate', {
    config: { role: 'operator' },
    schema: { tags, params: IdParams, body: Type.Optional(Type.Union([Type.Object({ host: Type.Optional(Type.String({ minLength: 1, description: 'target host id or name; chosen by the scheduler when absent' })) }, { additionalProperties: false }), Type.Null()])), response: { 202: Accepted, ...errors } },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.migrate(req.params.id, req.body?.host, p.userId));
  });

  app.post('/api/v1/vms/:id/memory', {
    config: { role: 'operator' },
    schema: { tags, params: IdParams, body: Type.Object({ targetMiB: Type.Integer({ minimum: 16 }) }, { additionalProperties: false }), response: { 202: Accepted, ...errors } },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.setMemory(req.params.id, req.body.targetMiB, p.userId));
  });

  app.post('/api/v1/vms/:id/resize', {
    config: { role: 'operator' },
    schema: { tags, description: 'Grows the disk of a stopped VM.', params: IdParams, body: Type.Object({ diskGiB: Type.Integer({ minimum: 1, maximum: 65536 }) }, { additionalProperties: false }), response: { 200: VmSchema, ...errors } },
  }, async (req) => {
    requireRole(req.principal, 'operator');
    return vms.resizeDisk(req.params.id, req.body.diskGiB);
  });

  app.delete('/api/v1/vms/:id', { config: { role: 'operator' }, schema: { tags, params: IdParams, response: { 202: Accepted, ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    return reply.code(202).send(await vms.remove(req.params.id, p.userId));
  });
}
