// What a request that matched no route gets: 405 with `Allow` when the path exists under other methods
// (RFC 9110 §15.5.6), 404 when it does not exist at all.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { AppError } from '../errors.ts';
import type { App } from './types.ts';

export function notFoundHandler(app: App) {
  return (req: FastifyRequest, reply: FastifyReply) => {
    const path = req.url.split('?')[0];
    // The router answers for concrete URLs, parameters included, decoding them as it does for real requests.
    const allowed = app.supportedMethods.filter((method) => method !== req.method && app.findRoute({ method, url: path }) !== null).sort();
    if (allowed.length === 0) return reply.code(404).send(new AppError('ROUTE_NOT_FOUND', `no route ${req.method} ${path}`).toBody());
    const allow = allowed.join(', ');
    return reply
      .code(405)
      .header('allow', allow)
      .send(new AppError('METHOD_NOT_ALLOWED', `${path} does not take ${req.method}; it takes ${allow}`, { method: req.method, path, allowed }).toBody());
  };
}
