// The serial console over a WebSocket: history, live output, keystrokes to the guest, and clear refusals.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { consoleUrl } from '../support/console.ts';
import { until } from '../until.ts';

describe('VM console', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2 });
    const r = await c.api('POST', '/api/v1/vms', { name: 'con-1', cpus: 1, memoryMiB: 256 });
    await c.waitTask(r.body.task.id);
  });
  after(async () => { await c?.close(); });

  const open = async (vm: string) => new WebSocket(await consoleUrl(c.url, c.token, vm));
  const closeOf = (ws: WebSocket) => new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));

  it('sends the boot history, then echoes what the user types', async () => {
    const ws = await open('con-1');
    let text = '';
    ws.on('message', (d) => (text += d.toString()));
    await until(() => text.includes('con-1 login:'), { what: 'history' });
    assert.match(text, /Linux version/);
    ws.send('uname -a\n');
    await until(() => text.includes('uname -a'), { what: 'echo' });
    ws.close();
  });

  it('follows the VM to its new host after a migration, and back after its agent reconnects', async () => {
    const ws = await open('con-1');
    let text = '';
    ws.on('message', (d) => (text += d.toString()));
    await until(() => text.includes('con-1 login:'), { what: 'history' });
    const m = await c.api('POST', '/api/v1/vms/con-1/migrate');
    assert.equal((await c.waitTask(m.body.task.id)).state, 'succeeded');
    await until(() => text.includes('console reattached'), { what: 'reattached after migration' });
    ws.send('after-move\n');
    await until(() => text.includes('after-move'), { what: 'echo from the new host' });

    const vm = (await c.api('GET', '/api/v1/vms/con-1')).body;
    const host = c.hosts.find((h) => h.agent.hostId === vm.hostId)!;
    text = '';
    await c.stopAgent(host);
    await c.startAgent(host);
    await until(() => text.includes('console reattached'), { what: 'reattached after reconnect' });
    ws.send('after-reconnect\n');
    await until(() => text.includes('after-reconnect'), { what: 'echo after reconnect' });
    ws.close();
  });

  it('opens only with a fresh ticket for that VM, once; a token in the URL is refused', async () => {
    const wsBase = `${c.url.replace('http', 'ws')}/api/v1/vms/con-1/console`;
    const byToken = await closeOf(new WebSocket(`${wsBase}?token=${encodeURIComponent(c.token)}`));
    assert.equal(byToken.code, 4001);
    assert.match(byToken.reason, /tokens in the URL are refused/);
    assert.equal((await closeOf(new WebSocket(wsBase, { headers: { authorization: `Bearer ${c.token}` } }))).code, 4001);
    assert.equal((await closeOf(new WebSocket(`${wsBase}?ticket=bogus`))).code, 4001);

    const url = await consoleUrl(c.url, c.token, 'con-1');
    const first = new WebSocket(url);
    let text = '';
    first.on('message', (d) => (text += d.toString()));
    await until(() => text.includes('con-1 login:'), { what: 'the console opened by the ticket' });
    assert.equal((await closeOf(new WebSocket(url))).code, 4001, 'a ticket opens one connection only');
    first.close();

    const issued = await c.api('POST', '/api/v1/vms/con-1/console/tickets');
    assert.equal(issued.status, 201);
    const ttlMs = Date.parse(issued.body.expiresAt) - Date.now();
    assert.ok(ttlMs > 0 && ttlMs <= 30_000, `expires within 30 s, not ${ttlMs} ms`);

    await c.api('POST', '/api/v1/vms', { name: 'con-2', cpus: 1, memoryMiB: 128, start: false });
    const other = await closeOf(new WebSocket(`${c.url.replace('http', 'ws')}/api/v1/vms/con-2/console?ticket=${encodeURIComponent(issued.body.ticket)}`));
    assert.equal(other.code, 4001, 'a ticket for con-1 does not open con-2');
  });

  it('gives tickets to operators only, for VMs that exist', async () => {
    const created = await c.api('POST', '/api/v1/users', { username: 'watcher', password: 'watcher-password', role: 'viewer' });
    assert.equal(created.status, 201);
    const login = await c.api('POST', '/api/v1/auth/login', { username: 'watcher', password: 'watcher-password' }, '');
    const denied = await c.api('POST', '/api/v1/vms/con-1/console/tickets', undefined, login.body.token);
    assert.equal(denied.status, 403);
    assert.equal(denied.body.error.code, 'FORBIDDEN');
    const unknown = await c.api('POST', '/api/v1/vms/no-such-vm/console/tickets');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'VM_NOT_FOUND');
  });

  it('refuses a stopped VM with a close code', async () => {
    const url = await consoleUrl(c.url, c.token, 'con-1');
    const stop = await c.api('POST', '/api/v1/vms/con-1/stop', { force: true });
    await c.waitTask(stop.body.task.id);
    assert.equal((await closeOf(new WebSocket(url))).code, 4009);
  });
});
