// Who may call what: every route declares the role it needs (`config.role`), and one hook enforces it.
import type { FastifyRequest, RouteOptions } from 'fastify';
import { AppError } from '../errors.ts';
import type { AuthService, Principal, Role } from '../features/auth/service.ts';
import type { App } from './types.ts';

/**
 * `public` routes need no user (login, the console's ticket, health and the API document); `agent` routes
 * are for Node Control and check a join token or host credential themselves, never a user's token.
 */
export type RouteRole = Role | 'public' | 'agent';

declare module 'fastify' {
  interface FastifyContextConfig {
    role?: RouteRole;
  }
}

export const roleRank: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

export const atLeast = (have: Role, need: Role): boolean => roleRank[have] >= roleRank[need];

export interface DeclaredRoute {
  method: string;
  url: string;
  role: RouteRole | undefined;
}

const tables = new WeakMap<object, DeclaredRoute[]>();

/** Every route of the app with the role it declared: what the startup check and the route-table test read. */
export const routeTable = (app: App): readonly DeclaredRoute[] => tables.get(app) ?? [];

// RFC 7235: the scheme name is case-insensitive.
const BEARER = /^bearer +(\S+) *$/i;

export function bearerToken(req: FastifyRequest): string | undefined {
  return BEARER.exec(req.headers.authorization ?? '')?.[1];
}

/**
 * Collects every route as it is added and refuses to start when one has no role, so a new route cannot
 * forget its check; then authenticates each request and compares the caller's role with the route's.
 */
export function enforceRouteRoles(app: App, auth: AuthService): void {
  const routes: RouteOptions[] = [];
  app.addHook('onRoute', (route) => void routes.push(route));
  app.addHook('onReady', async () => {
    const table = routes.flatMap((r) =>
      (Array.isArray(r.method) ? r.method : [r.method]).map((method) => ({ method, url: r.url, role: r.config?.role })),
    );
    tables.set(app, table);
    const missing = table.filter((r) => !r.role);
    if (missing.length > 0) {
      throw new Error(`routes without a declared role (config.role): ${missing.map((r) => `${r.method} ${r.url}`).join(', ')}`);
    }
  });

  app.addHook('onRequest', async (req) => {
    // Unmatched URLs reach the not-found handler, which has nothing to protect.
    if (!req.routeOptions.url) return;
    const role = req.routeOptions.config.role;
    if (role === 'public' || role === 'agent') return;
    const token = bearerToken(req);
    if (!token) throw new AppError('UNAUTHORIZED', 'send Authorization: Bearer <token>; get one from POST /api/v1/auth/login');
    const principal: Principal = await auth.authenticate(token);
    req.principal = principal;
    if (!role || !atLeast(principal.role, role as Role)) {
      throw new AppError('FORBIDDEN', `this needs the ${role ?? 'admin'} role; you are ${principal.role}`);
    }
  });
}
