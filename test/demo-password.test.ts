// The demo's banner prints only a password that logs in, across restarts on one data directory.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { childEnv, type Demo, startDemo, stopAll } from './support/demo-process.ts';

describe('demo admin password across restarts', () => {
  let dir: string;
  let demo: Demo | undefined;

  before(() => { dir = mkdtempSync(join(tmpdir(), 'awan-demo-password-')); });
  after(async () => {
    await demo?.stop();
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  /** One start of the demo on the shared data directory; stops the previous one first. */
  async function start(adminPassword: string | undefined): Promise<Demo> {
    await demo?.stop();
    demo = undefined;
    const env = childEnv(join(dir, 'home'), adminPassword === undefined ? {} : { AWAN_ADMIN_PASSWORD: adminPassword });
    demo = await startDemo(['--hosts', '1', '--port', '0', '--data-dir', join(dir, 'demo')], env);
    return demo;
  }

  async function login(d: Demo, password: string): Promise<{ status: number; token?: string }> {
    const res = await fetch(`${d.url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password }) });
    const body = (await res.json()) as { token?: string };
    return { status: res.status, token: body.token };
  }

  it('a second start with another AWAN_ADMIN_PASSWORD prints that one, and it logs in', async () => {
    const first = await start('first-password');
    assert.equal(first.loginLine, 'first-password');
    assert.equal((await login(first, 'first-password')).status, 200);

    const second = await start('second-password');
    assert.equal(second.loginLine, 'second-password');
    assert.equal((await login(second, 'second-password')).status, 200);
    assert.equal((await login(second, 'first-password')).status, 401);
  });

  it('a start without AWAN_ADMIN_PASSWORD prints the password that works now', async () => {
    const d = await start(undefined);
    assert.equal(d.loginLine, 'second-password');
    assert.equal((await login(d, 'second-password')).status, 200);
  });

  it('after the password was changed, the banner prints no stale one and says how to set a new one', async () => {
    const d = await start(undefined);
    const { token } = await login(d, 'second-password');
    const res = await fetch(`${d.url}/api/v1/auth/password`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ currentPassword: 'second-password', newPassword: 'only-the-user-knows' }),
    });
    assert.equal(res.status, 200, await res.text());

    const again = await start(undefined);
    assert.doesNotMatch(again.loginLine, /second-password/);
    assert.match(again.loginLine, /changed .*AWAN_ADMIN_PASSWORD=NEW npm run demo/);
    assert.equal((await login(again, 'only-the-user-knows')).status, 200);

    // The way back in for someone who forgot it.
    const reset = await start('reset-password');
    assert.equal(reset.loginLine, 'reset-password');
    assert.equal((await login(reset, 'reset-password')).status, 200);
  });
});
