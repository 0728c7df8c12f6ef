// Image routes.
import { Type } from 'typebox';
import { type App, ErrorBody, IdParams, errors, requireRole } from '../../http/types.ts';
import { CreateImageBody, ImageSchema, type ImageService } from './service.ts';

export function imageRoutes(app: App, images: ImageService): void {
  const tags = ['images'];
  app.get('/api/v1/images', { config: { role: 'viewer' }, schema: { tags, response: { 200: Type.Object({ items: Type.Array(ImageSchema), nextCursor: Type.Null() }), ...errors } } }, async () => ({
    items: await images.list(),
    nextCursor: null,
  }));
  app.get('/api/v1/images/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 200: ImageSchema, ...errors } } }, (req) => images.get(req.params.id));
  // 503: control cannot check disk images (qemu-img or prlimit missing), so it accepts none.
  app.post('/api/v1/images', { config: { role: 'admin' }, schema: { tags, body: CreateImageBody, response: { 201: ImageSchema, ...errors, 503: ErrorBody } } }, async (req, reply) => {
    // A path names a file on the servers, which then ends up inside a guest: only admins may choose one.
    requireRole(req.principal, 'admin');
    return reply.code(201).send(await images.create(req.body));
  });
  // Deleting follows creating: whoever may not register an image may not take one away from everyone either.
  app.delete('/api/v1/images/:id', { config: { role: 'admin' }, schema: { tags, params: IdParams, response: { 204: Type.Null(), ...errors } } }, async (req, reply) => {
    requireRole(req.principal, 'admin');
    await images.remove(req.params.id);
    return reply.code(204).send(null);
  });
}
