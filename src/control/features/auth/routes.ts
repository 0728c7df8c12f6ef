// Login, the caller's identity, API tokens and users.
import { Type } from 'typebox';
import { type App, ErrorBody, IdParams, errors, requireRole } from '../../http/types.ts';
import { AppError } from '../../errors.ts';
import { type LoginLimits, createLoginLimiter } from './login-limit.ts';
import type { AuthService } from './service.ts';

const TokenInfo = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: Type.Enum(['session', 'api'] as const),
  expiresAt: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  lastUsedAt: Type.Union([Type.String(), Type.Null()]),
});
const Role = Type.Enum(['admin', 'operator', 'viewer'] as const);
const User = Type.Object({ id: Type.String(), username: Type.String(), role: Role, createdAt: Type.String() });

export function authRoutes(app: App, auth: AuthService, opts: { loginLimits?: Partial<LoginLimits> } = {}): void {
  const tags = ['auth'];
  const limiter = createLoginLimiter(app, opts.loginLimits);
  app.post('/api/v1/auth/login', {
    config: { role: 'public' },
    schema: {
      tags,
      security: [],
      body: Type.Object({ username: Type.String({ minLength: 1, maxLength: 64 }), password: Type.String({ minLength: 1, maxLength: 1024 }) }, { additionalProperties: false }),
      response: { 200: Type.Object({ token: Type.String(), expiresAt: Type.String(), user: Type.Object({ id: Type.String(), username: Type.String(), role: Role }) }), ...errors, 429: ErrorBody },
    },
  }, async (req, reply) => {
    await limiter.check(req, reply);
    try {
      return await auth.login(req.body.username, req.body.password);
    } catch (err) {
      if (err instanceof AppError && err.code === 'UNAUTHORIZED') await limiter.failed(req);
      throw err;
    }
  });

  app.get('/api/v1/auth/me', { config: { role: 'viewer' }, schema: { tags, response: { 200: Type.Object({ userId: Type.String(), username: Type.String(), role: Role }), ...errors } } }, (req) => {
    const p = requireRole(req.principal, 'viewer');
    return { userId: p.userId, username: p.username, role: p.role };
  });

  app.post('/api/v1/auth/logout', { config: { role: 'viewer' }, schema: { tags, response: { 204: Type.Null(), ...errors } } }, async (req, reply) => {
    const p = requireRole(req.principal, 'viewer');
    await auth.revokeToken(p.userId, p.tokenId);
    return reply.code(204).send(null);
  });

  app.get('/api/v1/auth/tokens', { config: { role: 'viewer' }, schema: { tags, response: { 200: Type.Object({ items: Type.Array(TokenInfo) }), ...errors } } }, async (req) => ({
    items: await auth.listTokens(requireRole(req.principal, 'viewer').userId),
  }));

  app.post('/api/v1/auth/tokens', {
    config: { role: 'viewer' },
    schema: {
      tags,
      body: Type.Object({ name: Type.String({ minLength: 1, maxLength: 64 }), expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })) }, { additionalProperties: false }),
      response: { 201: Type.Object({ token: Type.String(), info: TokenInfo }), ...errors },
    },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'viewer');
    return reply.code(201).send(await auth.createApiToken(p.userId, req.body.name, req.body.expiresInDays));
  });

  app.delete('/api/v1/auth/tokens/:id', { config: { role: 'viewer' }, schema: { tags, params: IdParams, response: { 204: Type.Null(), ...errors } } }, async (req, reply) => {
    await auth.revokeToken(requireRole(req.principal, 'viewer').userId, req.params.id);
    return reply.code(204).send(null);
  });

  app.get('/api/v1/users', { config: { role: 'admin' }, schema: { tags: ['users'], response: { 200: Type.Object({ items: Type.Array(User) }), ...errors } } }, async (req) => {
    requireRole(req.principal, 'admin');
    return { items: await auth.listUsers() };
  });

  app.post('/api/v1/users', {
    config: { role: 'admin' },
    schema: {
      tags: ['users'],
      body: Type.Object({ username: Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-zA-Z0-9._-]+$' }), password: Type.String({ minLength: 8, maxLength: 1024 }), role: Role }, { additionalProperties: false }),
      response: { 201: User, ...errors },
    },
  }, async (req, reply) => {
    requireRole(req.principal, 'admin');
    return reply.code(201).send(await auth.createUser(req.body.username, req.body.password, req.body.role));
  });
}
