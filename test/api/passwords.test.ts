// Password changes through the API: an admin sets anyone's, a user changes their own, other tokens end.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Control, createControl } from '../../src/control/app.ts';
import { createLogger } from '../../src/lib/logger.ts';

describe('passwords', () => {
  let control: Control;
  let dir: string;
  let admin: string;

  async function call(method: 'GET' | 'POST' | 'PUT', url: string, body?: unknown, token?: string) {
    const res = await control.app.inject({ method, url, ...(body !== undefined ? { payload: body as object } : {}), headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: res.statusCode, body: res.body ? res.json() : undefined };
  }
  async function login(username: string, password: string): Promise<number> {
    return (await call('POST', '/api/v1/auth/login', { username, password })).status;
  }
  async function session(username: string, password: string): Promise<string> {
    const r = await call('POST', '/api/v1/auth/login', { username, password });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.token;
  }
  const works = async (token: string) => (await call('GET', '/api/v1/auth/me', undefined, token)).status === 200;
  async function user(username: string, role: 'admin' | 'operator' | 'viewer', password = 'first-password'): Promise<string> {
    const r = await call('POST', '/api/v1/users', { username, password, role }, admin);
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id;
  }
  function expectError(r: { status: number; body: any }, status: number, code: string): void {
    assert.equal(r.status, status, JSON.stringify(r.body));
    assert.equal(r.body.error.code, code);
    assert.ok(r.body.error.message.length > 5);
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'awan-passwords-'));
    control = await createControl({ db: 'sqlite::memory:', adminPassword: 'admin-password', log: createLogger('test', 'silent'), poolDir: join(dir, 'pool') });
    await control.start();
    admin = await session('admin', 'admin-password');
  });
  after(async () => {
    await control?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("an admin sets a user's password by name or id; the user's sessions and API tokens stop working", async () => {
    const id = await user('alice', 'operator');
    const s1 = await session('alice', 'first-password');
    const s2 = await session('alice', 'first-password');
    const api = (await call('POST', '/api/v1/auth/tokens', { name: 'script' }, s1)).body.token as string;
    assert.ok(await works(api));

    const r = await call('PUT', '/api/v1/users/alice/password', { password: 'second-password' }, admin);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body, { user: { id, username: 'alice' }, revokedTokens: 3 });
    assert.equal(await login('alice', 'first-password'), 401);
    assert.equal(await login('alice', 'second-password'), 200);
    for (const t of [s1, s2, api]) assert.equal(await works(t), false);
    assert.ok(await works(admin), "the admin's own session is untouched");

    const byId = await call('PUT', `/api/v1/users/${id}/password`, { password: 'third-password' }, admin);
    assert.equal(byId.status, 200, JSON.stringify(byId.body));
    assert.equal(await login('alice', 'third-password'), 200);
  });

  it('a user changes their own password with the current one; other sessions end, this one stays', async () => {
    await user('bob', 'viewer');
    const mine = await session('bob', 'first-password');
    const other = await session('bob', 'first-password');

    const r = await call('POST', '/api/v1/auth/password', { currentPassword: 'first-password', newPassword: 'bobs-new-password' }, mine);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.revokedTokens, 1);
    assert.ok(await works(mine));
    assert.equal(await works(other), false);
    assert.equal(await login('bob', 'first-password'), 401);
    assert.equal(await login('bob', 'bobs-new-password'), 200);
  });

  it('a wrong current password is 403 WRONG_PASSWORD and changes nothing', async () => {
    await user('carol', 'operator');
    const mine = await session('carol', 'first-password');
    const other = await session('carol', 'first-password');
    expectError(await call('POST', '/api/v1/auth/password', { currentPassword: 'not-it', newPassword: 'carols-new-password' }, mine), 403, 'WRONG_PASSWORD');
    assert.equal(await login('carol', 'first-password'), 200);
    assert.equal(await login('carol', 'carols-new-password'), 401);
    assert.ok(await works(other));
  });

  it('a password shorter than 8 characters is 400 and changes nothing', async () => {
    await user('dave', 'viewer');
    const mine = await session('dave', 'first-password');
    const short = await call('PUT', '/api/v1/users/dave/password', { password: 'short' }, admin);
    expectError(short, 400, 'VALIDATION_FAILED');
    assert.match(short.body.error.message, /password/);
    expectError(await call('POST', '/api/v1/auth/password', { currentPassword: 'first-password', newPassword: 'short' }, mine), 400, 'VALIDATION_FAILED');
    assert.equal(await login('dave', 'first-password'), 200);
    assert.equal(await login('dave', 'short'), 401);
    assert.ok(await works(mine));
  });

  it('an unknown user is 404 USER_NOT_FOUND', async () => {
    const r = await call('PUT', '/api/v1/users/nobody/password', { password: 'long-enough' }, admin);
    expectError(r, 404, 'USER_NOT_FOUND');
    assert.match(r.body.error.message, /nobody/);
  });

  it("only an admin sets another user's password; without a token it is 401", async () => {
    await user('erin', 'viewer');
    await user('frank', 'operator');
    const erin = await session('erin', 'first-password');
    const frank = await session('frank', 'first-password');
    expectError(await call('PUT', '/api/v1/users/frank/password', { password: 'taken-over' }, erin), 403, 'FORBIDDEN');
    expectError(await call('PUT', '/api/v1/users/erin/password', { password: 'taken-over' }, frank), 403, 'FORBIDDEN');
    // Not even their own without the current password: that is what /auth/password is for.
    expectError(await call('PUT', '/api/v1/users/erin/password', { password: 'taken-over' }, erin), 403, 'FORBIDDEN');
    expectError(await call('PUT', '/api/v1/users/erin/password', { password: 'taken-over' }), 401, 'UNAUTHORIZED');
    expectError(await call('POST', '/api/v1/auth/password', { currentPassword: 'first-password', newPassword: 'taken-over' }), 401, 'UNAUTHORIZED');
    assert.equal(await login('erin', 'first-password'), 200);
    assert.equal(await login('frank', 'first-password'), 200);
  });

  it('an admin setting their own password stays logged in, their other sessions end', async () => {
    await user('root2', 'admin');
    const mine = await session('root2', 'first-password');
    const other = await session('root2', 'first-password');
    const r = await call('PUT', '/api/v1/users/root2/password', { password: 'root2-new-password' }, mine);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(await works(mine));
    assert.equal(await works(other), false);
  });

  it('both routes are in the OpenAPI document', async () => {
    const doc = (await call('GET', '/api/v1/openapi.json')).body;
    assert.ok(doc.paths['/api/v1/users/{id}/password']?.put);
    assert.ok(doc.paths['/api/v1/auth/password']?.post);
  });
});
