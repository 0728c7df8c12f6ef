// The Fastify instance type with the TypeBox provider, shared by every routes file.
import type {} from '@fastify/websocket';
import type {} from '@fastify/swagger';
import type { FastifyBaseLogger, FastifyInstance, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { Principal, Role } from '../features/auth/service.ts';
import { atLeast } from './roles.ts';
import { AppError } from '../errors.ts';

export type App = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export const ErrorBody = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }),
});

/** Common error responses for the OpenAPI document. */
export const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody };

export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });

/** The caller, and a second check of the role the route declared (the hook in roles.ts checks it first). */
export function requireRole(principal: Principal | undefined, role: Role): Principal {
  if (!principal) throw new AppError('UNAUTHORIZED', 'log in first');
  if (!atLeast(principal.role, role)) throw new AppError('FORBIDDEN', `this needs the ${role} role; you are ${principal.role}`);
  return principal;
}
