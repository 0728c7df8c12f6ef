// The leader epoch at the protocol level, over real WebSockets: an agent refuses commands of an epoch lower
// than the highest it has seen (STALE_EPOCH), remembers that epoch across restarts, leaves a replica whose
// welcome is older, and follows a `redirect` to the leader with its credential. Control's side: every
// command and welcome carries the leader's epoch, and each new leader of a database has a higher one.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { Agent } from '../../src/agent/agent.ts';
import { saveCredentials } from '../../src/agent/credentials.ts';
import { createControl } from '../../src/control/app.ts';
import { createSimDriver } from '../../src/drivers/sim/index.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

const log = createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent');

/** A stand-in for a control replica: records what the agent sends and lets the test speak for control. */
async function fakeControl() {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const url = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  const sockets: { ws: WebSocket; req: IncomingMessage; received: any[] }[] = [];
  const connected: ((s: (typeof sockets)[number]) => void)[] = [];
  wss.on('connection', (ws, req) => {
    const s = { ws, req, received: [] as any[] };
    ws.on('message', (d) => s.received.push(JSON.parse(d.toString())));
    sockets.push(s);
    for (const c of connected.splice(0)) c(s);
  });
  return {
    url,
    sockets,
    /** The next connection (or the latest one, if it came already and was not taken). */
    next: (after = sockets.length) => (sockets.length > after ? Promise.resolve(sockets[after]) : new Promise<(typeof sockets)[number]>((r) => connected.push(r))),
    close: () => new Promise<void>((r) => {
      for (const s of sockets) s.ws.terminate();
      wss.close(() => r());
    }),
  };
}

describe('leader epoch on the agent protocol', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-epoch-'));
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  const startAgent = async (control: string, dataDir: string) => {
    const driver = createSimDriver({ hostname: 'h', address: 'h', bootDelayMs: 1 });
    const agent = new Agent({ control, driver, dataDir, name: 'h', log, maxBackoffMs: 200 });
    await agent.start();
    cleanups.push(async () => { await agent.stop(); await driver.close(); });
    return { agent, driver };
  };
  const welcome = (epoch: number, url: string, replicas = [url]) => JSON.stringify({ type: 'welcome', hostId: 'h1', heartbeatIntervalMs: 60_000, epoch, leader: url, replicas });
  const result = async (s: { received: any[] }, id: string) => until(() => s.received.find((m) => m.type === 'result' && m.id === id), { what: `result of ${id}` });

  it('refuses a command of an older epoch with STALE_EPOCH, and keeps refusing it after a restart', async () => {
    const control = await fakeControl();
    cleanups.push(control.close);
    const dataDir = join(dir, 'stale');
    saveCredentials(dataDir, { hostId: 'h1', credential: 'awh_test', control: control.url });
    const { agent } = await startAgent(control.url, dataDir);
    const s = await control.next(0);
    assert.equal(s.req.headers.authorization, 'Bearer awh_test');
    s.ws.send(welcome(5, control.url));
    await until(() => agent.epoch === 5, { what: 'epoch 5 seen' });
    s.ws.send(JSON.stringify({ type: 'command', id: 'c5', epoch: 5, command: { op: 'consoleDetach', vmId: 'v' } }));
    assert.equal((await result(s, 'c5')).ok, true);
    s.ws.send(JSON.stringify({ type: 'command', id: 'c7', epoch: 7, command: { op: 'consoleDetach', vmId: 'v' } }));
    assert.equal((await result(s, 'c7')).ok, true);
    // Epoch 5's leader was deposed by epoch 7's: its late command is refused, and nothing runs.
    const spec = { id: 'vm-late', name: 'late', cpus: 1, memoryMiB: 64, maxMemoryMiB: 64, boot: { kind: 'none' }, disks: [], nics: [] };
    s.ws.send(JSON.stringify({ type: 'command', id: 'c5-late', epoch: 5, command: { op: 'start', spec } }));
    const refused = await result(s, 'c5-late');
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, 'STALE_EPOCH');
    assert.equal(agent.epoch, 7);
    assert.deepEqual(JSON.parse(readFileSync(join(dataDir, 'control-epoch.json'), 'utf8')), { epoch: 7 });

    await agent.stop();
    const again = await startAgent(control.url, dataDir);
    assert.equal(again.agent.epoch, 7, 'the epoch survives a restart of the agent');
    const s2 = await control.next(1);
    s2.ws.send(welcome(7, control.url));
    s2.ws.send(JSON.stringify({ type: 'command', id: 'c6', epoch: 6, command: { op: 'start', spec } }));
    assert.equal((await result(s2, 'c6')).error.code, 'STALE_EPOCH');
    assert.deepEqual(await again.driver.list(), [], 'no refused command ran');
  });

  it('leaves a replica whose welcome carries an older epoch than one already seen', async () => {
    const control = await fakeControl();
    cleanups.push(control.close);
    const dataDir = join(dir, 'old-welcome');
    saveCredentials(dataDir, { hostId: 'h1', credential: 'awh_test', control: control.url });
    const { agent } = await startAgent(control.url, dataDir);
    const s = await control.next(0);
    s.ws.send(welcome(9, control.url));
    await until(() => agent.epoch === 9, { what: 'epoch 9' });
    s.ws.close();
    const s2 = await control.next(1);
    const closed = new Promise<void>((r) => s2.ws.once('close', () => r()));
    s2.ws.send(welcome(8, control.url));
    await closed;
    assert.equal(agent.epoch, 9);
  });

  it('follows a redirect to the leader with its credential, and learns the replicas', async () => {
    const follower = await fakeControl();
    const leader = await fakeControl();
    cleanups.push(follower.close, leader.close);
    const dataDir = join(dir, 'redirect');
    saveCredentials(dataDir, { hostId: 'h1', credential: 'awh_test', control: follower.url });
    const { agent } = await startAgent(follower.url, dataDir);
    const f = await follower.next(0);
    f.ws.send(JSON.stringify({ type: 'redirect', leader: leader.url, replicas: [leader.url, follower.url], retryMs: 100 }));
    f.ws.close(4001, 'not the leader');
    const l = await leader.next(0);
    assert.equal(l.req.headers.authorization, 'Bearer awh_test');
    l.ws.send(welcome(2, leader.url, [leader.url, follower.url]));
    await until(() => l.received.some((m) => m.type === 'hello'), { what: 'hello at the leader' });
    assert.deepEqual(agent.controls, [leader.url, follower.url]);
    const saved = JSON.parse(readFileSync(join(dataDir, 'agent-credentials.json'), 'utf8'));
    assert.deepEqual(saved.controls, [leader.url, follower.url], 'the replicas are kept with the credential');
  });

  it('sends the leader epoch on every command and in the welcome; each new leader of a database has a higher one', async () => {
    const db = `sqlite:${join(dir, 'epochs.db')}`;
    const c = await startCluster({ db, hosts: 1 });
    try {
      const epoch = c.control.leadership.epoch;
      assert.ok(epoch >= 1);
      assert.equal(c.control.leadership.isLeader, true);
      await until(() => c.hosts[0].agent.epoch === epoch, { what: 'the agent saw the epoch' });
      const created = await c.api('POST', '/api/v1/vms', { name: 'e1', cpus: 1, memoryMiB: 256 });
      assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded', 'commands of the current epoch run');
    } finally {
      await c.close();
    }
    const next = await createControl({ db, adminPassword: 'admin-password', log });
    try {
      const before = next.leadership.epoch;
      await next.start();
      assert.equal(before, 0, 'no epoch before it leads');
      assert.ok(next.leadership.epoch > 1, `a restarted control leads at a higher epoch (${next.leadership.epoch})`);
    } finally {
      await next.close();
    }
  });

  it('gives an agent dialling a replica that does not lead a redirect, then closes', async () => {
    const c = await startCluster({ hosts: 0 });
    try {
      const { body } = await c.api('POST', '/api/v1/hosts/join-tokens');
      const facts = { hostname: 'raw', cpus: 2, memoryMiB: 4096, memoryFreeMiB: 4096, driver: 'sim', address: 'raw', capabilities: [] };
      const joined = await c.api('POST', '/api/v1/agent/join', { joinToken: body.token, name: 'raw', facts }, '');
      // Make this control believe it lost the lease, as a deposed leader does.
      await (c.control.leadership as unknown as { stop(): Promise<void> }).stop();
      const ws = new WebSocket(`${c.url.replace('http', 'ws')}/api/v1/agent/connect`, { headers: { authorization: `Bearer ${joined.body.credential}` } });
      const messages: any[] = [];
      ws.on('message', (d) => messages.push(JSON.parse(d.toString())));
      const code = await new Promise<number>((r) => ws.on('close', (cc) => r(cc)));
      assert.equal(code, 4001);
      assert.equal(messages.length, 1);
      assert.equal(messages[0].type, 'redirect');
      assert.ok(messages[0].retryMs > 0);
    } finally {
      await c.close();
    }
  });
});
