// Users, sessions and API tokens: passwords hashed with scrypt, tokens stored only as hashes.
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { hashToken, newId, newSecret } from '../../../lib/ids.ts';
import { AppError } from '../../errors.ts';
import type { Database } from '../../store/schema.ts';
import { hashPassword, verifyPassword } from './passwords.ts';

export type Role = 'admin' | 'operator' | 'viewer';

export interface Principal {
  userId: string;
  username: string;
  role: Role;
  tokenId: string;
}

export interface ApiTokenInfo {
  id: string;
  name: string;
  kind: 'session' | 'api';
  expiresAt: string | null;
  createdAt: string;
  lastUsedAt: string | null;
}

const SESSION_TTL_MS = 12 * 3600_000;
const LAST_USED_RESOLUTION_MS = 60_000;

/**
 * A token checked a moment ago is trusted again for this long without SQL: every API call authenticates,
 * and the lookup was a large share of a request. Revocation in this process takes effect at once.
 */
const AUTH_CACHE_MS = 5000;

export function createAuthService({ db }: { db: Kysely<Database> }) {
  const recent = new Map<string, { principal: Principal; until: number; expiresMs: number | null }>();
  async function issueToken(userId: string, kind: 'session' | 'api', name: string, expiresAt: string | null) {
    const token = newSecret(kind === 'session' ? 'aws' : 'awt');
    const id = newId();
    const createdAt = new Date().toISOString();
    await db
      .insertInto('api_tokens')
      .values({ id, user_id: userId, name, kind, token_hash: hashToken(token), expires_at: expiresAt, created_at: createdAt, last_used_at: null })
      .execute();
    return { token, info: { id, name, kind, expiresAt, createdAt, lastUsedAt: null } satisfies ApiTokenInfo };
  }

  return {
    /** Makes the first admin when there is no user yet; returns the password when it was generated. */
    async ensureAdmin(password: string | undefined): Promise<{ created: boolean; generatedPassword?: string }> {
      const any = await db.selectFrom('users').select('id').limit(1).executeTakeFirst();
      if (any) return { created: false };
      const generated = password ? undefined : randomBytes(12).toString('base64url');
      await db
        .insertInto('users')
        .values({ id: newId(), username: 'admin', password_hash: await hashPassword(password ?? generated!), role: 'admin', created_at: new Date().toISOString() })
        .execute();
      return { created: true, generatedPassword: generated };
    },

    async createUser(username: string, password: string, role: Role) {
      const taken = await db.selectFrom('users').select('id').where('username', '=', username).executeTakeFirst();
      if (taken) throw new AppError('NAME_TAKEN', `user ${username} already exists`, { username });
      const id = newId();
      const createdAt = new Date().toISOString();
      await db.insertInto('users').values({ id, username, password_hash: await hashPassword(password), role, created_at: createdAt }).execute();
      return { id, username, role, createdAt };
    },

    async listUsers() {
      const rows = await db.selectFrom('users').select(['id', 'username', 'role', 'created_at']).orderBy('username').execute();
      return rows.map((r) => ({ id: r.id, username: r.username, role: r.role, createdAt: r.created_at }));
    },

    async login(username: string, password: string) {
      const user = await db.selectFrom('users').selectAll().where('username', '=', username).executeTakeFirst();
      // Same work and same answer whether the user exists or not, so names cannot be probed.
      const ok = await verifyPassword(password, user?.password_hash ?? 'scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=');
      if (!user || !ok) throw new AppError('UNAUTHORIZED', 'wrong username or password');
      const { token, info } = await issueToken(user.id, 'session', 'login', new Date(Date.now() + SESSION_TTL_MS).toISOString());
      return { token, expiresAt: info.expiresAt!, user: { id: user.id, username: user.username, role: user.role } };
    },

    async authenticate(bearer: string): Promise<Principal> {
      const hash = hashToken(bearer);
      const hit = recent.get(hash);
      if (hit && hit.until > Date.now() && (!hit.expiresMs || hit.expiresMs > Date.now())) return hit.principal;
      const row = await db
        .selectFrom('api_tokens')
        .innerJoin('users', 'users.id', 'api_tokens.user_id')
        .select(['api_tokens.id as tokenId', 'api_tokens.expires_at', 'api_tokens.last_used_at', 'users.id as userId', 'users.username', 'users.role'])
        .where('api_tokens.token_hash', '=', hash)
        .executeTakeFirst();
      if (!row) throw new AppError('UNAUTHORIZED', 'the token is not valid');
      const now = Date.now();
      if (row.expires_at && Date.parse(row.expires_at) <= now) throw new AppError('TOKEN_EXPIRED', 'the token has expired; log in again');
      if (!row.last_used_at || now - Date.parse(row.last_used_at) > LAST_USED_RESOLUTION_MS) {
        await db.updateTable('api_tokens').set({ last_used_at: new Date(now).toISOString() }).where('id', '=', row.tokenId).execute();
      }
      const principal: Principal = { userId: row.userId, username: row.username, role: row.role, tokenId: row.tokenId };
      if (recent.size > 10_000) recent.clear();
      recent.set(hash, { principal, until: now + AUTH_CACHE_MS, expiresMs: row.expires_at ? Date.parse(row.expires_at) : null });
      return principal;
    },

    async createApiToken(userId: string, name: string, expiresInDays?: number) {
      const expiresAt = expiresInDays ? new Date(Date.now() + expiresInDays * 86400_000).toISOString() : null;
      return issueToken(userId, 'api', name, expiresAt);
    },

    async listTokens(userId: string): Promise<ApiTokenInfo[]> {
      const rows = await db.selectFrom('api_tokens').selectAll().where('user_id', '=', userId).orderBy('created_at').execute();
      return rows.map((r) => ({ id: r.id, name: r.name, kind: r.kind, expiresAt: r.expires_at, createdAt: r.created_at, lastUsedAt: r.last_used_at }));
    },

    async revokeToken(userId: string, tokenId: string) {
      const res = await db.deleteFrom('api_tokens').where('id', '=', tokenId).where('user_id', '=', userId).executeTakeFirst();
      for (const [hash, entry] of recent) if (entry.principal.tokenId === tokenId) recent.delete(hash);
      if (Number(res.numDeletedRows) === 0) throw new AppError('TOKEN_NOT_FOUND', `token ${tokenId} not found`, { id: tokenId });
    },
  };
}

export type AuthService = ReturnType<typeof createAuthService>;
