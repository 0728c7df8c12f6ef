// The agent WebSocket refuses what it cannot trust: a wrong credential at the door, malformed or unknown
// messages one by one (logged, dropped, the connection lives), and a flood of them (the connection ends).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('agent protocol', () => {
  let c: Cluster;
  let credential: string;
  let hostId: string;
  before(async () => {
    c = await startCluster();
    const { body } = await c.api('POST', '/api/v1/hosts/join-tokens');
    const facts = { hostname: 'raw', cpus: 2, memoryMiB: 4096, memoryFreeMiB: 4096, driver: 'sim', address: 'raw', capabilities: [] };
    const joined = await c.api('POST', '/api/v1/agent/join', { joinToken: body.token, name: 'raw', facts }, '');
    ({ credential, hostId } = joined.body);
  });
  after(async () => { await c?.close(); });

  const connect = (cred: string) => new WebSocket(`${c.url.replace('http', 'ws')}/api/v1/agent/connect`, { headers: { authorization: `Bearer ${cred}` } });
  const hello = { type: 'hello', agentVersion: 't', vms: [], facts: { hostname: 'raw', cpus: 2, memoryMiB: 4096, memoryFreeMiB: 4096, driver: 'sim', address: 'raw', capabilities: [] } };

  it('refuses a wrong credential before upgrading', async () => {
    const ws = connect('awh_wrong');
    const status = await new Promise<number>((resolve) => ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)));
    assert.equal(status, 401);
  });

  it('drops malformed and unknown messages and keeps the connection', async () => {
    const ws = connect(credential);
    await new Promise((r) => ws.on('open', r));
    ws.send(JSON.stringify(hello));
    await until(async () => (await c.api('GET', `/api/v1/hosts/${hostId}`)).body.state === 'ready', { what: 'ready' });
    for (const bad of ['not json', '{"type":"reboot-the-world"}', '{"type":"heartbeat","seq":"x","memoryFreeMiB":1}', '{"type":"vms","full":true,"vms":[{"id":1}]}', '[]', 'null']) ws.send(bad);
    ws.send(JSON.stringify({ type: 'heartbeat', seq: 1, memoryFreeMiB: 1234 }));
    await until(async () => (await c.api('GET', `/api/v1/hosts/${hostId}`)).body.memoryFreeMiB === 1234, { what: 'a valid heartbeat after bad messages' });
    assert.equal(ws.readyState, WebSocket.OPEN);
    assert.equal((await c.api('GET', `/api/v1/hosts/${hostId}`)).body.state, 'ready');
    ws.close();
  });

  it('ends a connection that floods it with invalid messages', async () => {
    const ws = connect(credential);
    await new Promise((r) => ws.on('open', r));
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    for (let i = 0; i < 150; i++) ws.send('{"broken"');
    assert.equal(await closed, 1008);
  });
});
