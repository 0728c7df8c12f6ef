// The HTTP server's shared behaviour: validation settings, the one error body, authentication, metrics
// and the OpenAPI document.
import swagger from '@fastify/swagger';
import rateLimit from '@fastify/rate-limit';
import swaggerUi from '@fastify/swagger-ui';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyError, LogController } from 'fastify';
import type { Logger } from '../../lib/logger.ts';
import { newId } from '../../lib/ids.ts';
import { AppError } from '../errors.ts';
import { uniqueConflict } from '../store/unique.ts';
import type { AuthService } from '../features/auth/service.ts';
import type { Metrics } from '../metrics.ts';
import { notFoundHandler } from './not-found.ts';
import { enforceRouteRoles } from './roles.ts';
import type { App } from './types.ts';
import { validationError } from './validation-error.ts';
import { createValidatorCompiler } from './validator.ts';

export async function createHttpServer({ log, auth, metrics }: { log: Logger; auth: AuthService; metrics: Metrics }): Promise<App> {
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // Event streams and consoles stay open for good: shutting down closes them too.
    forceCloseConnections: true,
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as App;
  app.setValidatorCompiler(createValidatorCompiler());

  app.setErrorHandler((err: FastifyError | AppError | Error, req, reply) => {
    if (err instanceof AppError) return reply.code(err.status).send(err.toBody());
    const taken = uniqueConflict(err);
    if (taken) return reply.code(taken.status).send(taken.toBody());
    const fe = err as FastifyError;
    if (fe.validation) {
      const part = fe.validationContext ?? 'request';
      const schemas = (req.routeOptions.schema ?? {}) as Record<string, unknown>;
      const values: Record<string, unknown> = { body: req.body, querystring: req.query, params: req.params, headers: req.headers };
      return reply.code(400).send(validationError(fe.validation, { part, value: values[part], schema: schemas[part] ?? (part === 'querystring' ? schemas.query : undefined) }).toBody());
    }
    switch (fe.code) {
      case 'FST_ERR_CTP_INVALID_JSON_BODY':
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return reply.code(400).send(new AppError('INVALID_JSON', `the body is not valid JSON: ${fe.message}`).toBody());
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return reply.code(413).send(new AppError('PAYLOAD_TOO_LARGE', 'the body is larger than 1 MiB').toBody());
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return reply.code(415).send(new AppError('UNSUPPORTED_MEDIA_TYPE', `content type ${req.headers['content-type'] ?? '(none)'} is not supported; send application/json`).toBody());
    }
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      return reply.code(fe.statusCode).send(new AppError('BAD_REQUEST', fe.message).toBody());
    }
    const errorId = newId();
    req.log.error({ err, errorId, url: req.url }, 'unhandled error');
    return reply.code(500).send(new AppError('INTERNAL', `internal error; see the control log for ${errorId}`, { errorId }).toBody());
  });

  // The API speaks JSON only: a text body is refused with 415 instead of failing validation.
  app.removeContentTypeParser('text/plain');

  app.setNotFoundHandler(notFoundHandler(app));

  app.addHook('onRequest', async (req) => {
    (req as { startedAt?: bigint }).startedAt = process.hrtime.bigint();
  });
  // Decided by the route that matched, never by the raw URL: the router decodes `%61pi` to `api`.
  enforceRouteRoles(app, auth);

  app.addHook('onResponse', async (req, reply) => {
    const started = (req as { startedAt?: bigint }).startedAt;
    if (started === undefined) return;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    metrics.httpDuration.observe({ method: req.method, route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) }, seconds);
  });

  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'awan', description: 'Cloud Control API of awan, an open datacenter manager', version: '0.1.0' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  // The browsable API page and its assets are public, like the document they show.
  await app.register(async (docs) => {
    docs.addHook('onRoute', (route) => void (route.config = { ...route.config, role: 'public' }));
    await docs.register(swaggerUi, { routePrefix: '/docs' });
  });
  // Limits are counted by the routes that use them (login counts failures only), not on every request.
  await app.register(rateLimit, { global: false });
  app.get('/api/v1/openapi.json', { config: { role: 'public' }, schema: { hide: true } }, () => app.swagger());
  return app;
}
