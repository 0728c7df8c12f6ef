// The serial console over a WebSocket: history, live output, keystrokes to the guest, and clear refusals.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('VM console', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2 });
    const r = await c.api('POST', '/api/v1/vms', { name: 'con-1', cpus: 1, memoryMiB: 256 });
    await c.waitTask(r.body.task.id);
  });
  after(async () => { await c?.close(); });

  const open = (vm: string, token = c.token) =>
    new WebSocket(`${c.url.replace('http', 'ws')}/api/v1/vms/${vm}/console`, { headers: { authorization: `Bearer ${token}` } });

  it('sends the boot history, then echoes what the user types', async () => {
    const ws = open('con-1');
    let text = '';
    ws.on('message', (d) => (text += d.toString()));
    await until(() => text.includes('con-1 login:'), { what: 'history' });
    assert.match(text, /Linux version/);
    ws.send('uname -a\n');
    await until(() => text.includes('uname -a'), { what: 'echo' });
    ws.close();
  });

  it('follows the VM to its new host after a migration, and back after its agent reconnects', async () => {
    const ws = open('con-1');
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

  it('refuses a bad token, an unknown VM and a stopped VM with a close code', async () => {
    const closeCode = (ws: WebSocket) => new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    assert.equal(await closeCode(open('con-1', 'bogus')), 4001);
    assert.equal(await closeCode(open('no-such-vm')), 4004);
    const stop = await c.api('POST', '/api/v1/vms/con-1/stop', { force: true });
    await c.waitTask(stop.body.task.id);
    assert.equal(await closeCode(open('con-1')), 4009);
  });
});
