// Authentication: scrypt at OWASP's cost with stored hashes upgraded at login, failed-login throttling,
// tokens that expire, and the Bearer scheme in any case.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashPassword, verifyPassword } from '../../src/control/features/auth/passwords.ts';
import { createAuthService } from '../../src/control/features/auth/service.ts';
import { openStore } from '../../src/control/store/db.ts';
import { type RoleControl, startRoleControl } from '../support/roles.ts';

const login = (rc: RoleControl, username: string, password: string, remoteAddress: string) =>
  rc.control.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { username, password }, remoteAddress });

describe('password hashing', () => {
  it('hashes with scrypt N=2^17, r=8, p=1 by default, and the default service logs in with it', async () => {
    const stored = await hashPassword('correct horse');
    assert.match(stored, /^scrypt\$131072\$8\$1\$/);
    assert.equal(await verifyPassword('correct horse', stored), true);
    assert.equal(await verifyPassword('wrong horse', stored), false);

    const store = await openStore('sqlite::memory:');
    try {
      const auth = createAuthService({ db: store.db });
      await auth.createUser('dflt', 'dflt-password', 'viewer');
      const row = await store.db.selectFrom('users').select('password_hash').where('username', '=', 'dflt').executeTakeFirstOrThrow();
      assert.match(row.password_hash, /^scrypt\$131072\$8\$1\$/);
      assert.equal((await auth.login('dflt', 'dflt-password')).user.username, 'dflt');
    } finally {
      await store.close();
    }
  });

  it('upgrades a weaker stored hash at the next good login, and only then', async () => {
    const store = await openStore('sqlite::memory:');
    try {
      const auth = createAuthService({ db: store.db, scryptCost: { N: 2 ** 12, r: 8, p: 1 } });
      const { id } = await auth.createUser('old', 'placeholder', 'viewer');
      await store.db.updateTable('users').set({ password_hash: await hashPassword('old-password', { N: 2 ** 10, r: 8, p: 1 }) }).where('id', '=', id).execute();
      const hashOf = async () => (await store.db.selectFrom('users').select('password_hash').where('id', '=', id).executeTakeFirstOrThrow()).password_hash;

      await assert.rejects(auth.login('old', 'not-it'), { code: 'UNAUTHORIZED' });
      assert.match(await hashOf(), /^scrypt\$1024\$/, 'a failed login changes nothing');
      await auth.login('old', 'old-password');
      assert.match(await hashOf(), /^scrypt\$4096\$8\$1\$/);
      await auth.login('old', 'old-password');
      await assert.rejects(auth.login('old', 'not-it'), { code: 'UNAUTHORIZED' });
    } finally {
      await store.close();
    }
  });
});

describe('login throttling', () => {
  let rc: RoleControl;
  before(async () => { rc = await startRoleControl(); });
  after(async () => { await rc?.close(); });

  it('answers the 11th bad login in a minute for one user with 429 and Retry-After; others still log in', async () => {
    for (let i = 1; i <= 10; i++) assert.equal((await login(rc, 'admin', `guess-${i}`, '10.0.0.1')).statusCode, 401, `attempt ${i}`);
    const limited = await login(rc, 'admin', 'guess-11', '10.0.0.1');
    assert.equal(limited.statusCode, 429);
    const body = limited.json();
    assert.equal(body.error.code, 'RATE_LIMITED');
    assert.match(body.error.message, /too many failed logins; try again in \d+ s/);
    const retryAfter = Number(limited.headers['retry-after']);
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${limited.headers['retry-after']}`);
    assert.equal(body.error.details.retryAfterSeconds, retryAfter);
    assert.equal((await login(rc, 'admin', 'admin-password', '10.0.0.1')).statusCode, 429, 'even the right password waits');

    assert.equal((await login(rc, 'a-operator', 'operator-password', '10.0.0.2')).statusCode, 200, 'another user from another address');
    assert.equal((await login(rc, 'admin', 'admin-password', '10.0.0.3')).statusCode, 200, 'the same user from another address');
  });

  it('does not count successful logins', async () => {
    for (let i = 1; i <= 15; i++) assert.equal((await login(rc, 'a-viewer', 'viewer-password', '10.0.0.4')).statusCode, 200, `login ${i}`);
  });

  it('takes its limits from the configuration, per address and user and per address', async () => {
    const strict = await startRoleControl({ auth: { loginLimits: { perAddressAndUser: 2, perAddress: 3 } } });
    try {
      assert.equal((await login(strict, 'admin', 'x', '10.0.1.1')).statusCode, 401);
      assert.equal((await login(strict, 'admin', 'x', '10.0.1.1')).statusCode, 401);
      assert.equal((await login(strict, 'admin', 'x', '10.0.1.1')).statusCode, 429);
      assert.equal((await login(strict, 'a-viewer', 'x', '10.0.1.1')).statusCode, 401);
      assert.equal((await login(strict, 'a-operator', 'x', '10.0.1.1')).statusCode, 429, 'the address has used up its attempts');
      assert.equal((await login(strict, 'a-operator', 'operator-password', '10.0.1.2')).statusCode, 200);
    } finally {
      await strict.close();
    }
  });
});

describe('tokens', () => {
  let rc: RoleControl;
  before(async () => { rc = await startRoleControl(); });
  after(async () => { await rc?.close(); });

  const me = (authorization: string) => rc.control.app.inject({ method: 'GET', url: '/api/v1/auth/me', headers: { authorization } });

  it('gives API tokens 90 days by default and logins 12 hours; an expired token is 401 TOKEN_EXPIRED', async () => {
    const session = await login(rc, 'admin', 'admin-password', '10.0.2.1');
    const sessionMs = Date.parse(session.json().expiresAt) - Date.now();
    assert.ok(sessionMs > 11.9 * 3600_000 && sessionMs <= 12 * 3600_000, `session lives ${sessionMs} ms`);

    const made = await rc.control.app.inject({ method: 'POST', url: '/api/v1/auth/tokens', headers: { authorization: `Bearer ${session.json().token}` }, payload: { name: 'script' } });
    assert.equal(made.statusCode, 201);
    const { token, info } = made.json();
    const apiMs = Date.parse(info.expiresAt) - Date.now();
    assert.ok(apiMs > 89.9 * 86400_000 && apiMs <= 90 * 86400_000, `API token lives ${apiMs} ms`);

    assert.equal((await me(`Bearer ${token}`)).statusCode, 200);
    const fresh = (await rc.control.auth.createApiToken((await rc.control.auth.authenticate(token)).userId, 'short')).token;
    await rc.control.db.updateTable('api_tokens').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('name', '=', 'short').execute();
    const expired = await me(`Bearer ${fresh}`);
    assert.equal(expired.statusCode, 401);
    assert.equal(expired.json().error.code, 'TOKEN_EXPIRED');
  });

  it('takes the Bearer scheme in any case (RFC 7235)', async () => {
    const token = await rc.tokenFor('viewer');
    for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
      const res = await me(`${scheme} ${token}`);
      assert.equal(res.statusCode, 200, scheme);
      assert.equal(res.json().username, 'a-viewer');
    }
    assert.equal((await me(`Basic ${token}`)).statusCode, 401);
  });

  it('gives tokens that never expired a lifetime when the store is upgraded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'awan-auth-'));
    try {
      const url = `sqlite:${join(dir, 'awan.db')}`;
      const before = await openStore(url);
      await before.db.insertInto('users').values({ id: 'u1', username: 'old', password_hash: 'x', role: 'viewer', created_at: new Date().toISOString() }).execute();
      await before.db.insertInto('api_tokens').values({ id: 't1', user_id: 'u1', name: 'forever', kind: 'api', token_hash: 'h1', expires_at: null, created_at: new Date().toISOString(), last_used_at: null }).execute();
      // The store as it was before token lifetimes: their migration not yet applied.
      await before.db.deleteFrom('kysely_migration' as never).where('name' as never, '=', '006_token_expiry' as never).execute();
      await before.close();
      const upgraded = await openStore(url);
      const row = await upgraded.db.selectFrom('api_tokens').select('expires_at').where('id', '=', 't1').executeTakeFirstOrThrow();
      await upgraded.close();
      const lifeMs = Date.parse(row.expires_at ?? '') - Date.now();
      assert.ok(lifeMs > 89.9 * 86400_000 && lifeMs <= 90 * 86400_000, `the old token now expires in ${lifeMs} ms`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('image deletion', () => {
  let rc: RoleControl;
  before(async () => { rc = await startRoleControl(); });
  after(async () => { await rc?.close(); });

  it('is for those who may register images: an operator gets 403 and the image stays', async () => {
    const as = async (role: 'admin' | 'operator', method: 'POST' | 'DELETE' | 'GET', url: string, payload?: object) =>
      rc.control.app.inject({ method, url, headers: { authorization: `Bearer ${await rc.tokenFor(role)}` }, ...(payload ? { payload } : {}) });
    const created = await as('admin', 'POST', '/api/v1/images', { name: 'golden', format: 'raw', path: '/images/golden.raw' });
    assert.equal(created.statusCode, 201, created.body);
    assert.equal((await as('operator', 'POST', '/api/v1/images', { name: 'other', format: 'raw', path: '/images/other.raw' })).statusCode, 403);

    const refused = await as('operator', 'DELETE', '/api/v1/images/golden');
    assert.equal(refused.statusCode, 403);
    assert.equal(refused.json().error.code, 'FORBIDDEN');
    assert.equal((await as('operator', 'GET', '/api/v1/images/golden')).statusCode, 200, 'the image is still there');
    assert.equal((await as('admin', 'DELETE', '/api/v1/images/golden')).statusCode, 204);
    assert.equal((await as('admin', 'GET', '/api/v1/images/golden')).statusCode, 404);
  });
});
