// Login throttling: failed attempts are counted per address and user, and per address, so guessing is slow
// while a person who types their password right is never held up by someone else's mistakes.
import type { FastifyRequest } from 'fastify';
import { AppError } from '../../errors.ts';
import type { App } from '../../http/types.ts';

export interface LoginLimits {
  /** Failed logins one address may make for one user per window. */
  perAddressAndUser: number;
  /** Failed logins one address may make for all users together per window (spraying many names). */
  perAddress: number;
  windowMs: number;
}

export const DEFAULT_LOGIN_LIMITS: LoginLimits = { perAddressAndUser: 10, perAddress: 50, windowMs: 60_000 };

export function createLoginLimiter(app: App, limits: Partial<LoginLimits> = {}) {
  const { perAddressAndUser, perAddress, windowMs } = { ...DEFAULT_LOGIN_LIMITS, ...limits };
  const username = (req: FastifyRequest) => String((req.body as { username?: unknown } | undefined)?.username ?? '').toLowerCase();
  const counters = [
    app.createRateLimit({ max: perAddressAndUser, timeWindow: windowMs, keyGenerator: (req) => `login|${req.ip}|${username(req)}` }),
    app.createRateLimit({ max: perAddress, timeWindow: windowMs, keyGenerator: (req) => `login|${req.ip}` }),
  ];
  return {
    /** Refuses with 429 and Retry-After when a counter has no attempts left; counts nothing itself. */
    async check(req: FastifyRequest, reply: { header(name: string, value: string): unknown }): Promise<void> {
      for (const counter of counters) {
        const state = await counter(req, { increment: false });
        if (state.isAllowed || state.remaining > 0) continue;
        const retryAfterSeconds = Math.max(1, state.ttlInSeconds);
        reply.header('retry-after', String(retryAfterSeconds));
        throw new AppError('RATE_LIMITED', `too many failed logins; try again in ${retryAfterSeconds} s`, { retryAfterSeconds });
      }
    },
    /** Counts one failed attempt against every limit. */
    async failed(req: FastifyRequest): Promise<void> {
      for (const counter of counters) await counter(req);
    },
  };
}
