// Two Cloud Control replicas on one PostgreSQL schema: exactly one leads (runs the controllers, talks to the
// agents), the other serves the API; an agent given the other's URL is sent to the leader; when the leader
// stops, the other leads at a higher epoch and the agent follows it.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent } from '../../src/agent/agent.ts';
import { type Control, createControl } from '../../src/control/app.ts';
import { createSimDriver } from '../../src/drivers/sim/index.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { TEST_SCRYPT_COST } from '../support/cluster.ts';
import { freshPostgres } from '../support/postgres.ts';
import { until } from '../until.ts';

const log = createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent');

describe('control replicas on PostgreSQL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-replicas-'));
  let pg: Awaited<ReturnType<typeof freshPostgres>> | undefined;
  const replicas: { control: Control; url: string }[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  const startReplica = async () => {
    const control = await createControl({
      db: pg!.url, adminPassword: 'admin-password', log, heartbeatIntervalMs: 200, poolDir: join(dir, 'pool'), resyncIntervalMs: 300,
      auth: { scryptCost: TEST_SCRYPT_COST }, leader: { leaseMs: 1500, renewMs: 200, retryMs: 200, renewDeadlineMs: 1000 },
    });
    await control.app.listen({ port: 0, host: '127.0.0.1' });
    await control.start();
    const address = control.app.server.address() as { port: number };
    const r = { control, url: `http://127.0.0.1:${address.port}` };
    replicas.push(r);
    return r;
  };
  const api = async (base: string, method: string, path: string, token: string, body?: unknown) => {
    const res = await fetch(base + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
    return { status: res.status, body: (await res.json()) as any };
  };
  const login = async (base: string) => {
    const res = await fetch(`${base}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: 'admin-password' }) });
    assert.equal(res.status, 200, `login at ${base}`);
    return ((await res.json()) as { token: string }).token;
  };

  before(async () => {
    pg = await freshPostgres();
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    for (const r of replicas) await r.control.close().catch(() => undefined);
    await pg?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lets exactly one lead while the other serves the API, and hands over when the leader stops', async () => {
    const a = await startReplica();
    const b = await startReplica();
    assert.equal(a.control.leadership.isLeader, true, 'the first replica leads');
    assert.equal(b.control.leadership.isLeader, false, 'the second does not');
    assert.equal(a.control.manager.running, true);
    assert.equal(b.control.manager.running, false, 'only the leader runs controllers');

    // The follower serves the API: login, lists, the replicas and who leads.
    const tokenB = await login(b.url);
    assert.equal((await api(b.url, 'GET', '/api/v1/vms', tokenB)).status, 200);
    const seen = await until(async () => {
      const r = (await api(b.url, 'GET', '/api/v1/replicas', tokenB)).body;
      return r.items.length === 2 ? r : undefined;
    }, { what: 'both replicas listed' });
    assert.equal(seen.self.leader, false);
    assert.equal(seen.leader.url, a.url);
    assert.deepEqual(seen.items.filter((i: any) => i.leader).map((i: any) => i.url), [a.url]);

    // An agent that knows only the follower's URL joins there and is sent to the leader.
    const { body: joinToken } = await api(b.url, 'POST', '/api/v1/hosts/join-tokens', tokenB);
    const driver = createSimDriver({ hostname: 'h1', address: 'h1', bootDelayMs: 20 });
    const agent = new Agent({ control: b.url, joinToken: joinToken.token, driver, dataDir: join(dir, 'h1'), name: 'h1', log, maxBackoffMs: 200 });
    await agent.start();
    cleanups.push(async () => { await agent.stop(); await driver.close(); });
    const tokenA = await login(a.url);
    await until(async () => (await api(a.url, 'GET', '/api/v1/hosts', tokenA)).body.items.find((h: any) => h.name === 'h1')?.state === 'ready', { what: 'h1 ready at the leader' });
    assert.equal(agent.dialled, a.url, 'the agent talks to the leader');
    assert.equal(agent.epoch, a.control.leadership.epoch);
    await until(() => agent.controls.includes(b.url) && agent.controls[0] === a.url, { what: 'the agent knows both replicas, the leader first' });

    // A VM asked for through the follower runs: the leader's controllers pick it up from SQL.
    const created = await api(b.url, 'POST', '/api/v1/vms', tokenB, { name: 'via-follower', cpus: 1, memoryMiB: 256 });
    assert.equal(created.status, 202);
    await until(async () => (await api(b.url, 'GET', `/api/v1/tasks/${created.body.task.id}`, tokenB)).body.state === 'succeeded', { what: 'the VM created through the follower runs' });
    const vmBefore = (await driver.list()).find((v) => v.id === created.body.vm.id);
    assert.equal(vmBefore?.state, 'running');

    // The leader stops: the other replica leads, at a higher epoch, and the agent follows it.
    const oldEpoch = a.control.leadership.epoch;
    await a.control.close();
    replicas.shift();
    await until(() => b.control.leadership.isLeader, { what: 'the second replica leads' });
    assert.ok(b.control.leadership.epoch > oldEpoch);
    await until(() => b.control.manager.running, { what: 'the new leader runs the controllers' });
    await until(() => agent.dialled === b.url && agent.epoch === b.control.leadership.epoch && b.control.registry.get(agent.hostId!)?.connection, { what: 'the agent follows the new leader' });
    await until(async () => (await api(b.url, 'GET', '/api/v1/hosts', tokenB)).body.items.find((h: any) => h.name === 'h1')?.state === 'ready', { what: 'h1 ready at the new leader' });
    const vmAfter = (await driver.list()).find((v) => v.id === created.body.vm.id);
    assert.equal(vmAfter?.state, 'running', 'the VM still runs');
    assert.ok((vmAfter?.uptimeS ?? 0) >= (vmBefore?.uptimeS ?? 0), 'and was not restarted');
    const vm = (await api(b.url, 'GET', `/api/v1/vms/${created.body.vm.id}`, tokenB)).body;
    assert.equal(vm.phase, 'running');
  });
});
