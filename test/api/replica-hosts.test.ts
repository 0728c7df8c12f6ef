// Two Cloud Control replicas on one PostgreSQL schema: A leads (agents, controllers), B follows and serves
// the same API. B shows A's hosts from SQL, B's writes reach A's controllers over NOTIFY, B's event
// stream carries what A emits, and a console opened on B is relayed to A.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { type Control, createControl } from '../../src/control/app.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { type Cluster, TEST_SCRYPT_COST, startCluster } from '../support/cluster.ts';
import { consoleUrl } from '../support/console.ts';
import { freshPostgres } from '../support/postgres.ts';
import { until } from '../until.ts';

describe('control replicas on one PostgreSQL', () => {
  let c: Cluster;
  let b: Control;
  let bUrl: string;
  let drop: () => Promise<void>;
  const seen: string[] = [];

  before(async () => {
    const pg = await freshPostgres();
    drop = pg.drop;
    c = await startCluster({ hosts: 2, db: pg.url });
    // A probe controller on the leader, to see which host notes reach its controllers.
    await c.control.manager.stop();
    c.control.manager.register({ name: 'probe', watches: ['host'], reconcile: async (key) => void seen.push(key), listKeys: async () => [] });
    await c.control.manager.start();
    b = await createControl({
      db: pg.url, autoLead: false, leaderUrl: async () => c.url, log: createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent'),
      poolDir: join(c.dir, 'pool'), heartbeatIntervalMs: 200, auth: { scryptCost: TEST_SCRYPT_COST },
    });
    await b.start();
    await b.app.listen({ port: 0, host: '127.0.0.1' });
    const address = b.app.server.address();
    bUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  });
  after(async () => {
    await b?.close();
    await c?.close();
    await drop?.();
  });

  /** The API of replica B, with the session the leader gave (sessions are rows every replica reads). */
  const onB = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(bUrl + path, {
      method,
      headers: { authorization: `Bearer ${c.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };

  it('shows the leader\'s hosts on the follower, with state, connection and heartbeats from SQL', async () => {
    assert.equal(b.registry.leading, false);
    assert.equal(b.manager.running, false, 'a follower runs no controller');
    const first = await until(async () => {
      const items = (await onB('GET', '/api/v1/hosts')).body.items;
      return items.length === 2 && items.every((h: any) => h.state === 'ready' && h.connected && h.lastHeartbeatAt) ? items : undefined;
    }, { what: 'both hosts ready on B' });
    assert.deepEqual(first.map((h: any) => h.name), ['host-1', 'host-2']);
    // Heartbeats keep reaching SQL: B sees a later beat of host-1.
    await until(async () => {
      const h = (await onB('GET', '/api/v1/hosts/host-1')).body;
      return Date.parse(h.lastHeartbeatAt) > Date.parse(first[0].lastHeartbeatAt);
    }, { what: 'a later heartbeat on B' });

    const victim = c.hosts[1];
    await c.stopAgent(victim);
    await until(async () => {
      const h = (await onB('GET', '/api/v1/hosts/host-2')).body;
      return h.state === 'unreachable' && h.connected === false;
    }, { what: 'host-2 unreachable on B' });
    await c.startAgent(victim);
    await until(async () => {
      const h = (await onB('GET', '/api/v1/hosts/host-2')).body;
      return h.state === 'ready' && h.connected === true;
    }, { what: 'host-2 ready again on B' });
  });

  it('carries a label change made on the follower to the leader\'s controllers', async () => {
    const hostId = c.hosts[0].agent.hostId!;
    seen.length = 0;
    const patched = await onB('PATCH', '/api/v1/hosts/host-1', { labels: { rack: 'r7' } });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.deepEqual(patched.body.labels, { rack: 'r7' });
    await until(() => seen.includes(hostId), { what: 'the host note on the leader' });
    // The leader's own table took the new spec: it places by that label.
    await until(async () => (await c.api('GET', '/api/v1/hosts/host-1')).body.labels.rack === 'r7', { what: 'label on A' });
    const r = await c.api('POST', '/api/v1/vms', { name: 'rack-vm', cpus: 1, memoryMiB: 128, placementLabels: { rack: 'r7' } });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    assert.equal((await c.api('GET', '/api/v1/vms/rack-vm')).body.hostId, hostId);
  });

  it('streams on the follower the events the leader emits', async () => {
    const ctl = new AbortController();
    const res = await fetch(`${bUrl}/api/v1/events`, { headers: { authorization: `Bearer ${c.token}`, accept: 'text/event-stream' }, signal: ctl.signal });
    assert.equal(res.status, 200);
    let text = '';
    const reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) text += decoder.decode(chunk);
    })().catch(() => undefined);
    await until(() => text.includes(': connected'), { what: 'stream open' });
    const r = await c.api('POST', '/api/v1/vms', { name: 'sse-vm', cpus: 1, memoryMiB: 128 });
    assert.equal(r.status, 202);
    await until(() => text.includes('VM sse-vm created'), { what: 'vm.created on B' });
    await until(() => /event: task\.succeeded[\s\S]*sse-vm|event: vm\.running/.test(text), { what: 'the VM running, on B' });
    const seqs = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `events in order: ${seqs.join(',')}`);
    ctl.abort();
    await reading;
  });

  it('runs a drain asked on the follower on the leader', async () => {
    const drain = await onB('POST', '/api/v1/hosts/host-2/drain');
    assert.equal(drain.status, 202, JSON.stringify(drain.body));
    const task = await until(async () => {
      const t = (await onB('GET', `/api/v1/tasks/${drain.body.task.id}`)).body;
      return ['succeeded', 'failed'].includes(t.state) ? t : undefined;
    }, { timeoutMs: 20_000, what: 'drain task' });
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    await until(async () => (await onB('GET', '/api/v1/hosts/host-2')).body.vmCount === 0, { what: 'host-2 empty on B' });
    assert.equal((await onB('POST', '/api/v1/hosts/host-2/activate')).body.state, 'ready');
  });

  it('relays a console opened on the follower to the leader', async () => {
    const url = await consoleUrl(bUrl, c.token, 'sse-vm');
    const ws = new WebSocket(url);
    let text = '';
    ws.on('message', (d) => (text += d.toString()));
    await until(() => text.includes('sse-vm login:'), { what: 'console history through B' });
    ws.send('relayed-keys\n');
    await until(() => text.includes('relayed-keys'), { what: 'echo through B' });
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    ws.close();
    assert.equal(await closed, 1005);
    // A refusal by the leader reaches the viewer with its code and reason.
    const bogus = new WebSocket(`${bUrl.replace('http', 'ws')}/api/v1/vms/sse-vm/console?ticket=bogus`);
    const refusal = await new Promise<{ code: number; reason: string }>((resolve) => bogus.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    assert.equal(refusal.code, 4001);
    assert.match(refusal.reason, /ticket/);
  });
});
