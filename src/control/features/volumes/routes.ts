// Volume routes: read only; volumes are made, grown and deleted through their VMs.
import { Type } from 'typebox';
import { PageOf, PageQuery } from '../../http/pagination.ts';
import { type App, IdParams, errors } from '../../http/types.ts';
import type { PoolService } from '../pools/service.ts';
import { VolumeSchema } from './model.ts';
import type { Volumes } from './service.ts';

export function volumeRoutes(app: App, volumes: Volumes, pools: PoolService): void {
  const tags = ['volumes'];
  app.get('/api/v1/volumes', {
    config: { role: 'viewer' },
    schema: {
      tags,
      querystring: Type.Object({ ...PageQuery, pool: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })), vm: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false }),
      response: { 200: PageOf(VolumeSchema), ...errors },
    },
  }, async (req) => {
    // A pool is named by id or name; an unknown one is a 404, not an empty page.
    const poolId = req.query.pool ? (await pools.find(req.query.pool)).id : undefined;
    return volumes.list({ limit: req.query.limit ?? 100, cursor: req.query.cursor, poolId, vmId: req.query.vm });
  });

  app.get('/api/v1/volumes/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: VolumeSchema, ...errors } } }, (req) => volumes.get(req.params.id));
}
