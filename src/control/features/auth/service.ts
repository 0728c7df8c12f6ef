// Users, sessions and API tokens: passwords hashed with scrypt, tokens stored only as hashes.
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { hashToken, newId, newSecret } from '../../../lib/ids.ts';
import { AppError, notFound } from '../../errors.ts';
import type { Database } from '../../store/schema.ts';
import { DEFAULT_SCRYPT_COST, type ScryptCost, hashPassword, needsRehash, verifyPassword } from './passwords.ts';

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
/** API tokens are for scripts, so they live longer than a login, but never forever unless asked to be renewed. */
export const API_TOKEN_DEFAULT_DAYS = 90;
const LAST_USED_RESOLUTION_MS = 60_000;

/**
 * A token checked a moment ago is trusted again for this long without SQL: every API call authenticates,
 * and the lookup was a large share of a request. Revocation in this process takes effect at once.
 */
const AUTH_CACHE_MS = 5000;

export interface AuthServiceOptions {
  db: Kysely<Database>;
  /** scrypt work factors for new hashes; weaker stored hashes are upgraded at the next good login. */
  scryptCost?: ScryptCost;
  now?: () => number;
}

export function createAuthService({ db, scryptCost = DEFAULT_SCRYPT_COST, now = Date.now }: AuthServiceOptions) {
  const hash = (password: string) => hashPassword(password, scryptCost);
  // Verified against when the user does not exist, at the same cost as a real hash, so timing tells nothing.
  let dummyHash: Promise<string> | undefined;
  const recent = new Map<string, { principal: Principal; until: number; expiresMs: number | null }>();
  async function issueToken(userId: string, kind: 'session' | 'api', name: string, expiresAt: string | null) {
    const token = newSecret(kind === 'session' ? 'aws' : 'awt');
    const id = newId();
    const createdAt = new Date(now()).toISOString();
    await db
      .insertInto('api_tokens')
      .values({ id, user_id: userId, name, kind, token_hash: hashToken(token), expires_at: expiresAt, created_at: createdAt, last_used_at: null })
      .execute();
    return { token, info: { id, name, kind, expiresAt, createdAt, lastUsedAt: null } satisfies ApiTokenInfo };
  }

  /** Drops cached principals of a user whose tokens were just revoked, so none outlives the revocation here. */
  function forgetUser(userId: string): void {
    for (const [hash, entry] of recent) if (entry.principal.userId === userId) recent.delete(hash);
  }

  async function findUser(idOrName: string) {
    // An id wins over a user name that happens to look like one.
    const user =
      (await db.selectFrom('users').selectAll().where('id', '=', idOrName).executeTakeFirst()) ??
      (await db.selectFrom('users').selectAll().where('username', '=', idOrName).executeTakeFirst());
    if (!user) throw notFound('USER_NOT_FOUND', 'user', idOrName);
    return user;
  }

  /**
   * A new password ends every other way in: the user's other sessions and API tokens are revoked (a
   * password is changed because it may be known to someone else, who may have made tokens with it). The
   * token that made the change, if any, stays valid so the caller is not logged out by their own request.
   */
  async function setPasswordOf(userId: string, password: string, keepTokenId: string | undefined): Promise<{ revokedTokens: number }> {
    const passwordHash = await hash(password);
    const revoked = await db.transaction().execute(async (trx) => {
      await trx.updateTable('users').set({ password_hash: passwordHash }).where('id', '=', userId).execute();
      let del = trx.deleteFrom('api_tokens').where('user_id', '=', userId);
      if (keepTokenId) del = del.where('id', '!=', keepTokenId);
      return Number((await del.executeTakeFirst()).numDeletedRows);
    });
    forgetUser(userId);
    return { revokedTokens: revoked };
  }

  return {
    /** Whether `password` is the user's password now; for callers that must not show a wrong one. */
    async checkPassword(username: string, password: string): Promise<boolean> {
      const user = await db.selectFrom('users').select('password_hash').where('username', '=', username).executeTakeFirst();
      return user ? verifyPassword(password, user.password_hash) : false;
    },

    /** An admin sets any user's password; no old password needed. */
    async setPassword(idOrName: string, password: string, by: Principal | undefined) {
      const user = await findUser(idOrName);
      const result = await setPasswordOf(user.id, password, by?.userId === user.id ? by.tokenId : undefined);
      return { user: { id: user.id, username: user.username }, ...result };
    },

    /** A user changes their own password and proves they know the current one. */
    async changeOwnPassword(by: Principal, currentPassword: string, newPassword: string) {
      const user = await findUser(by.userId);
      if (!(await verifyPassword(currentPassword, user.password_hash))) {
        throw new AppError('WRONG_PASSWORD', 'the current password is not right; the password stays as it was');
      }
      const result = await setPasswordOf(user.id, newPassword, by.tokenId);
      return { user: { id: user.id, username: user.username }, ...result };
    },

    /** Makes the first admin when there is no user yet; returns the password when it was generated. */
    async ensureAdmin(password: string | undefined): Promise<{ created: boolean; generatedPassword?: string }> {
      const any = await db.selectFrom('users').select('id').limit(1).executeTakeFirst();
      if (any) return { created: false };
      const generated = password ? undefined : randomBytes(12).toString('base64url');
      await db
        .insertInto('users')
        .values({ id: newId(), username: 'admin', password_hash: await hash(password ?? generated!), role: 'admin', created_at: new Date(now()).toISOString() })
        .execute();
      return { created: true, generatedPassword: generated };
    },

    async createUser(username: string, password: string, role: Role) {
      const taken = await db.selectFrom('users').select('id').where('username', '=', username).executeTakeFirst();
      if (taken) throw new AppError('NAME_TAKEN', `user ${username} already exists`, { username });
      const id = newId();
      const createdAt = new Date(now()).toISOString();
      await db.insertInto('users').values({ id, username, password_hash: await hash(password), role, created_at: createdAt }).execute();
      return { id, username, role, createdAt };
    },

    async listUsers() {
      const rows = await db.selectFrom('users').select(['id', 'username', 'role', 'created_at']).orderBy('username').execute();
      return rows.map((r) => ({ id: r.id, username: r.username, role: r.role, createdAt: r.created_at }));
    },

    async login(username: string, password: string) {
      const user = await db.selectFrom('users').selectAll().where('username', '=', username).executeTakeFirst();
      // Same work and same answer whether the user exists or not, so names cannot be probed.
      const ok = await verifyPassword(password, user?.password_hash ?? (await (dummyHash ??= hash(randomBytes(16).toString('hex')))));
      if (!user || !ok) throw new AppError('UNAUTHORIZED', 'wrong username or password');
      if (needsRehash(user.password_hash, scryptCost)) {
        // Compare-and-set: a password changed meanwhile is not overwritten with the old one.
        await db.updateTable('users').set({ password_hash: await hash(password) }).where('id', '=', user.id).where('password_hash', '=', user.password_hash).execute();
      }
      const { token, info } = await issueToken(user.id, 'session', 'login', new Date(now() + SESSION_TTL_MS).toISOString());
      return { token, expiresAt: info.expiresAt!, user: { id: user.id, username: user.username, role: user.role } };
    },

    async authenticate(bearer: string): Promise<Principal> {
      const tokenHash = hashToken(bearer);
      const hit = recent.get(tokenHash);
      if (hit && hit.until > now() && (!hit.expiresMs || hit.expiresMs > now())) return hit.principal;
      const row = await db
        .selectFrom('api_tokens')
        .innerJoin('users', 'users.id', 'api_tokens.user_id')
        .select(['api_tokens.id as tokenId', 'api_tokens.expires_at', 'api_tokens.last_used_at', 'users.id as userId', 'users.username', 'users.role'])
        .where('api_tokens.token_hash', '=', tokenHash)
        .executeTakeFirst();
      if (!row) throw new AppError('UNAUTHORIZED', 'the token is not valid');
      const at = now();
      if (row.expires_at && Date.parse(row.expires_at) <= at) throw new AppError('TOKEN_EXPIRED', 'the token has expired; log in again or make a new API token');
      if (!row.last_used_at || at - Date.parse(row.last_used_at) > LAST_USED_RESOLUTION_MS) {
        await db.updateTable('api_tokens').set({ last_used_at: new Date(at).toISOString() }).where('id', '=', row.tokenId).execute();
      }
      const principal: Principal = { userId: row.userId, username: row.username, role: row.role, tokenId: row.tokenId };
      if (recent.size > 10_000) recent.clear();
      recent.set(tokenHash, { principal, until: at + AUTH_CACHE_MS, expiresMs: row.expires_at ? Date.parse(row.expires_at) : null });
      return principal;
    },

    async createApiToken(userId: string, name: string, expiresInDays = API_TOKEN_DEFAULT_DAYS) {
      return issueToken(userId, 'api', name, new Date(now() + expiresInDays * 86400_000).toISOString());
    },

    async listTokens(userId: string): Promise<ApiTokenInfo[]> {
      const rows = await db.selectFrom('api_tokens').selectAll().where('user_id', '=', userId).orderBy('created_at').execute();
      return rows.map((r) => ({ id: r.id, name: r.name, kind: r.kind, expiresAt: r.expires_at, createdAt: r.created_at, lastUsedAt: r.last_used_at }));
    },

    async revokeToken(userId: string, tokenId: string) {
      const res = await db.deleteFrom('api_tokens').where('id', '=', tokenId).where('user_id', '=', userId).executeTakeFirst();
      for (const [key, entry] of recent) if (entry.principal.tokenId === tokenId) recent.delete(key);
      if (Number(res.numDeletedRows) === 0) throw new AppError('TOKEN_NOT_FOUND', `token ${tokenId} not found`, { id: tokenId });
    },
  };
}

export type AuthService = ReturnType<typeof createAuthService>;
