// Pool routes: the pools there are (shared ones an admin registers, each host's local one), with free space.
import { Type } from 'typebox';
import { OneOf } from '../../http/choice.ts';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import { CreatePoolBody, PoolSchema, poolTypes } from './model.ts';
import type { PoolService } from './service.ts';

export function poolRoutes(app: App, pools: PoolService): void {
  const tags = ['pools'];
  app.get('/api/v1/pools', {
    config: { role: 'viewer' },
    schema: {
      tags,
      querystring: Type.Object({ ...PageQuery, type: Type.Optional(OneOf(poolTypes)), host: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false }),
      response: { 200: PageOf(PoolSchema), ...errors },
    },
  }, (req) => pools.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, type: req.query.type, hostId: req.query.host }));

  app.get('/api/v1/pools/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: PoolSchema, ...errors } } }, (req) => pools.get(req.params.id));

  // A path names a directory on every server: only admins may choose one.
  app.post('/api/v1/pools', {
    config: { role: 'admin' },
    schema: { tags, description: 'Registers a shared pool: a directory every host mounts at this path.', body: CreatePoolBody, response: { 201: PoolSchema, ...errors } },
  }, async (req, reply) => {
    requireRole(req.principal, 'admin');
    return reply.code(201).send(await pools.create(req.body));
  });
}
