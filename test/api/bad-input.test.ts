// Bad input gets a 4xx with a code and a message, never a 500, and changes nothing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';

describe('bad input', () => {
  let c: Cluster;
  before(async () => { c = await startCluster({ hosts: 2 }); });
  after(async () => { await c?.close(); });

  const raw = (path: string, init: RequestInit & { auth?: boolean } = {}) =>
    fetch(c.url + path, { ...init, headers: { ...(init.auth === false ? {} : { authorization: `Bearer ${c.token}` }), ...(init.headers as Record<string, string>) } });

  async function expectError(res: Response, status: number, code: string) {
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(res.status, status, JSON.stringify(body));
    assert.equal(body.error.code, code);
    assert.ok(body.error.message.length > 5, 'the message says what went wrong');
  }
  const vmCount = async () => (await c.api('GET', '/api/v1/vms')).body.items.length;

  it('malformed JSON is 400 INVALID_JSON', async () => {
    await expectError(await raw('/api/v1/vms', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "x", cpus: ' }), 400, 'INVALID_JSON');
    assert.equal(await vmCount(), 0);
  });

  it('wrong types are 400 VALIDATION_FAILED naming the field', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'x', cpus: 'two', memoryMiB: 512 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    assert.match(r.body.error.message, /cpus/);
  });

  it('unknown fields are refused, not ignored', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'x', cpus: 1, memoryMiB: 512, memroyMiB: 1024 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    assert.match(r.body.error.message, /memroyMiB/);
    assert.equal(await vmCount(), 0);
  });

  it('a 10 MB body is 413 PAYLOAD_TOO_LARGE', async () => {
    const body = JSON.stringify({ name: 'x', cpus: 1, memoryMiB: 512, pad: 'x'.repeat(10 * 1024 * 1024) });
    await expectError(await raw('/api/v1/vms', { method: 'POST', headers: { 'content-type': 'application/json' }, body }), 413, 'PAYLOAD_TOO_LARGE');
  });

  it('a body that is not JSON is 415', async () => {
    await expectError(await raw('/api/v1/vms', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
  });

  it('unknown ids are 404 with the kind of object', async () => {
    await expectError(await raw('/api/v1/vms/nope'), 404, 'VM_NOT_FOUND');
    await expectError(await raw('/api/v1/hosts/nope'), 404, 'HOST_NOT_FOUND');
    await expectError(await raw('/api/v1/tasks/nope'), 404, 'TASK_NOT_FOUND');
    await expectError(await raw('/api/v1/images/nope'), 404, 'IMAGE_NOT_FOUND');
    await expectError(await raw('/api/v1/vms/nope/start', { method: 'POST' }), 404, 'VM_NOT_FOUND');
    await expectError(await raw('/api/v1/nothing-here'), 404, 'ROUTE_NOT_FOUND');
  });

  it('no token, a wrong token and an expired token are 401', async () => {
    await expectError(await raw('/api/v1/vms', { auth: false }), 401, 'UNAUTHORIZED');
    await expectError(await raw('/api/v1/vms', { auth: false, headers: { authorization: 'Bearer aws_not-a-token' } }), 401, 'UNAUTHORIZED');
    const working = await c.api('POST', '/api/v1/auth/tokens', { name: 'working' });
    assert.equal(working.status, 201);
    assert.equal((await c.api('GET', '/api/v1/vms', undefined, working.body.token)).status, 200);
    const created = await c.api('POST', '/api/v1/auth/tokens', { name: 'short-lived' });
    await c.control.db.updateTable('api_tokens').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('id', '=', created.body.info.id).execute();
    await expectError(await raw('/api/v1/vms', { auth: false, headers: { authorization: `Bearer ${created.body.token}` } }), 401, 'TOKEN_EXPIRED');
    await expectError(await raw('/api/v1/auth/login', { method: 'POST', auth: false, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: 'wrong' }) }), 401, 'UNAUTHORIZED');
  });

  it('an encoded path cannot slip past authentication', async () => {
    for (const path of ['/%61pi/v1/vms', '/api/v1/%76ms', '/%61pi/v1/hosts', '/api//v1/tasks', '/API/v1/vms']) {
      const res = await raw(path, { auth: false });
      assert.ok([401, 404].includes(res.status), `${path} answered ${res.status}`);
    }
    assert.equal((await raw('/%61pi/v1/vms', { auth: false })).status, 401);
    assert.equal((await raw('/api/v1/openapi.json', { auth: false })).status, 200);
  });

  it('API tokens are stored hashed, passwords with scrypt', async () => {
    const created = await c.api('POST', '/api/v1/auth/tokens', { name: 'script' });
    const rows = await c.control.db.selectFrom('api_tokens').select('token_hash').execute();
    assert.ok(rows.every((r) => r.token_hash !== created.body.token && /^[0-9a-f]{64}$/.test(r.token_hash)));
    const user = await c.control.db.selectFrom('users').select('password_hash').where('username', '=', 'admin').executeTakeFirstOrThrow();
    assert.match(user.password_hash, /^scrypt\$/);
  });

  it('a duplicate name is 409 NAME_TAKEN and leaves one VM', async () => {
    const first = await c.api('POST', '/api/v1/vms', { name: 'dup', cpus: 1, memoryMiB: 256 });
    assert.equal(first.status, 202);
    const second = await c.api('POST', '/api/v1/vms', { name: 'dup', cpus: 1, memoryMiB: 256 });
    assert.equal(second.status, 409);
    assert.equal(second.body.error.code, 'NAME_TAKEN');
    assert.equal((await c.api('GET', '/api/v1/vms?name=dup')).body.items.length, 1);
    await c.waitTask(first.body.task.id);
  });

  it('a VM larger than any host is 422 NO_CAPACITY and not created', async () => {
    const before = await vmCount();
    const r = await c.api('POST', '/api/v1/vms', { name: 'huge', cpus: 1, memoryMiB: 1024 * 1024 });
    assert.equal(r.status, 422);
    assert.equal(r.body.error.code, 'NO_CAPACITY');
    assert.match(r.body.error.message, /larger than any host/);
    assert.equal(await vmCount(), before);
  });

  it('an impossible state change is 409 INVALID_STATE', async () => {
    const r = await c.api('POST', '/api/v1/vms/dup/start');
    assert.equal(r.status, 409);
    assert.equal(r.body.error.code, 'INVALID_STATE');
  });

  it('a bad cursor and a bad limit are 400', async () => {
    assert.equal((await c.api('GET', '/api/v1/vms?cursor=%%%')).status, 400);
    assert.equal((await c.api('GET', '/api/v1/vms?limit=0')).status, 400);
    assert.equal((await c.api('GET', '/api/v1/vms?limit=abc')).status, 400);
  });

  it('a viewer cannot create VMs (403)', async () => {
    assert.equal((await c.api('POST', '/api/v1/users', { username: 'viewer1', password: 'viewer-password', role: 'viewer' })).status, 201);
    const login = await c.api('POST', '/api/v1/auth/login', { username: 'viewer1', password: 'viewer-password' }, '');
    const r = await c.api('POST', '/api/v1/vms', { name: 'v', cpus: 1, memoryMiB: 256 }, login.body.token);
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'FORBIDDEN');
    assert.equal((await c.api('GET', '/api/v1/vms', undefined, login.body.token)).status, 200);
  });

  it('a join token works once', async () => {
    const { body } = await c.api('POST', '/api/v1/hosts/join-tokens');
    const facts = { hostname: 'x', cpus: 1, memoryMiB: 1024, memoryFreeMiB: 1024, driver: 'sim', address: 'x', capabilities: [] };
    const first = await c.api('POST', '/api/v1/agent/join', { joinToken: body.token, name: 'joined-once', facts }, '');
    assert.equal(first.status, 201);
    const second = await c.api('POST', '/api/v1/agent/join', { joinToken: body.token, name: 'joined-twice', facts }, '');
    assert.equal(second.status, 401);
    assert.equal(second.body.error.code, 'UNAUTHORIZED');
  });
});
