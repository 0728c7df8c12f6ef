// Host routes: the fleet view, join tokens, a host's spec (labels, zone, power fence), and maintenance and
// quarantine (drain/activate).
import { Type } from 'typebox';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import { TaskSchema } from '../tasks/routes.ts';
import { OneOf } from '../../http/choice.ts';
import { Labels } from './labels.ts';
import { HostSchema, PowerFenceInput, hostStates } from './model.ts';
import type { HostService } from './service.ts';

export function hostRoutes(app: App, hosts: HostService): void {
  const tags = ['hosts'];
  app.get('/api/v1/hosts', {
    config: { role: 'viewer' },
    schema: { tags, querystring: Type.Object({ state: Type.Optional(OneOf(hostStates)) }, { additionalProperties: false }), response: { 200: Type.Object({ items: Type.Array(HostSchema), nextCursor: Type.Null() }), ...errors } },
  }, async (req) => ({ items: (await hosts.list()).filter((h) => !req.query.state || h.state === req.query.state), nextCursor: null }));

  app.get('/api/v1/hosts/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: HostSchema, ...errors } } }, (req) => hosts.get(req.params.id));

  app.patch('/api/v1/hosts/:id', {
    config: { role: 'admin' },
    schema: {
      tags,
      params: IdParams,
      body: Type.Object(
        {
          labels: Type.Optional(Labels),
          zone: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 63 }), Type.Null()])),
          /** null removes it. */
          powerFence: Type.Optional(Type.Union([PowerFenceInput, Type.Null()])),
        },
        { additionalProperties: false },
      ),
      response: { 200: HostSchema, ...errors },
    },
  }, async (req) => {
    requireRole(req.principal, 'admin');
    return hosts.update(req.params.id, req.body);
  });

  app.post('/api/v1/hosts/join-tokens', {
    config: { role: 'admin' },
    schema: { tags, response: { 201: Type.Object({ token: Type.String(), expiresAt: Type.String() }), ...errors } },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'admin');
    return reply.code(201).send(await hosts.createJoinToken(p.userId));
  });

  app.post('/api/v1/hosts/:id/drain', { config: { role: 'admin' }, schema: { tags, params: IdParams, response: { 202: Type.Object({ host: HostSchema, task: TaskSchema }), ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'admin');
    return reply.code(202).send(await hosts.drain(req.params.id, p.userId));
  });

  app.post('/api/v1/hosts/:id/activate', { config: { role: 'admin' }, schema: { tags, params: IdParams, response: { 200: HostSchema, ...errors } } }, async (req) => {
    requireRole(req.principal, 'admin');
    return hosts.activate(req.params.id);
  });
}
