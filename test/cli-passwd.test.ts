// awan user passwd and a piped login, as child processes against an in-process control plane.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { awan, childEnv, type Run, stopAll } from './support/demo-process.ts';
import { type Cluster, startCluster } from './support/cluster.ts';

describe('awan user passwd', () => {
  let c: Cluster;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'awan-passwd-'));
    c = await startCluster({ hosts: 0 });
    assert.equal((await c.api('POST', '/api/v1/users', { username: 'alice', password: 'alice-password', role: 'operator' })).status, 201);
  });
  after(async () => {
    await stopAll();
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Each user has their own config directory, as on their own machine. */
  const as = (who: string, args: string[], input?: string): Promise<Run> =>
    awan(args, { env: childEnv(join(dir, who), { AWAN_SERVER: c.url }), input });
  const loginStatus = async (username: string, password: string) =>
    (await c.api('POST', '/api/v1/auth/login', { username, password }, '')).status;

  function succeeded(r: Run, what: string): void {
    assert.equal(r.code, 0, `${what} failed:\n${r.stderr}${r.stdout}`);
  }

  it('login reads the password from standard input when there is no terminal', async () => {
    const r = await as('alice', ['login', '--username', 'alice'], 'alice-password\n');
    succeeded(r, 'login');
    assert.match(r.stdout, /logged in to .* as alice \(operator\)/);
  });

  it('login with nothing on standard input says how to give a password', async () => {
    const r = await as('nobody', ['login', '--username', 'alice'], '');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no password given: type it when asked, pipe it on standard input \(echo PW \| awan login\), pass --password or set AWAN_PASSWORD/);
  });

  it('a user changes their own password: current then new, one a line; other sessions end', async () => {
    const other = (await c.api('POST', '/api/v1/auth/login', { username: 'alice', password: 'alice-password' }, '')).body.token as string;
    const r = await as('alice', ['user', 'passwd'], 'alice-password\nalice-second\n');
    succeeded(r, 'user passwd');
    assert.match(r.stdout, /^password of alice changed; 1 other token \(sessions, API tokens\) revoked; you stay logged in here$/m);
    assert.equal(await loginStatus('alice', 'alice-password'), 401);
    assert.equal(await loginStatus('alice', 'alice-second'), 200);
    assert.equal((await c.api('GET', '/api/v1/auth/me', undefined, other)).status, 401);
    succeeded(await as('alice', ['vm', 'list']), 'vm list with the session that changed the password');
  });

  it('a wrong current password exits 1 with WRONG_PASSWORD and changes nothing', async () => {
    const r = await as('alice', ['user', 'passwd', 'alice'], 'not-it\nalice-third\n');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error WRONG_PASSWORD: /m);
    assert.equal(await loginStatus('alice', 'alice-second'), 200);
  });

  it('a missing new password exits 1 and says how to give one', async () => {
    const r = await as('alice', ['user', 'passwd'], 'alice-second\n');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no new password given: pipe it on standard input/);
    assert.equal(await loginStatus('alice', 'alice-second'), 200);
  });

  it("an admin sets another user's password with only the new one; a non-admin may not", async () => {
    succeeded(await as('admin', ['login'], 'admin-password\n'), 'admin login');
    const r = await as('admin', ['user', 'passwd', 'alice', '--json'], 'set-by-admin\n');
    succeeded(r, 'user passwd alice');
    assert.equal(JSON.parse(r.stdout).user.username, 'alice');
    assert.equal(await loginStatus('alice', 'set-by-admin'), 200);

    succeeded(await as('alice', ['login', '--username', 'alice'], 'set-by-admin\n'), 'alice login');
    const denied = await as('alice', ['user', 'passwd', 'admin'], 'taken-over\n');
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error FORBIDDEN: /m);
    assert.equal(await loginStatus('admin', 'admin-password'), 200);
  });

  it('an unknown user exits 1 with USER_NOT_FOUND', async () => {
    const r = await as('admin', ['user', 'passwd', 'nobody'], 'long-enough\n');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error USER_NOT_FOUND: user nobody not found$/m);
  });
});
