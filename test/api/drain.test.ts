// Drain as a controller: the API records the request in the host's spec and answers its task; the drain
// controller moves the VMs away, fails with each reason when one cannot move, and carries on after a
// restart of control.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { type Control, createControl } from '../../src/control/app.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { type Cluster, TEST_SCRYPT_COST, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

const create = async (c: Cluster, body: Record<string, unknown>) => {
  const r = await c.api('POST', '/api/v1/vms', { cpus: 1, memoryMiB: 256, ...body });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const t = await c.waitTask(r.body.task.id);
  assert.equal(t.state, 'succeeded', JSON.stringify(t));
};
const onHost = async (c: Cluster, hostId: string) => (await c.api('GET', `/api/v1/vms?host=${hostId}`)).body.items as any[];

describe('drain', () => {
  const clusters: Cluster[] = [];
  after(async () => {
    for (const c of clusters) await c.close();
  });

  it('moves every VM off the host, then the task succeeds and the host stays in maintenance', async () => {
    const c = await startCluster({ hosts: 3, control: { heartbeatIntervalMs: 1000 } });
    clusters.push(c);
    for (let i = 1; i <= 6; i++) await create(c, { name: `d-${i}` });
    const hostId = (await c.api('GET', '/api/v1/hosts/host-1')).body.id;
    const before = await onHost(c, hostId);
    assert.ok(before.length > 0);
    const drain = await c.api('POST', '/api/v1/hosts/host-1/drain');
    assert.equal(drain.status, 202);
    assert.equal(drain.body.host.state, 'maintenance');
    assert.equal(drain.body.host.drainTaskId, drain.body.task.id, 'the request is in the host spec');
    // Asking again while it runs answers the same task.
    assert.equal((await c.api('POST', '/api/v1/hosts/host-1/drain')).body.task.id, drain.body.task.id);
    const task = await c.waitTask(drain.body.task.id, 30_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.match(task.message, /empty and in maintenance/);
    assert.equal((await onHost(c, hostId)).length, 0);
    for (const v of before) {
      const vm = (await c.api('GET', `/api/v1/vms/${v.id}`)).body;
      assert.equal(vm.phase, 'running');
      assert.notEqual(vm.hostId, hostId);
    }
    assert.equal((await c.api('GET', '/api/v1/hosts/host-1')).body.state, 'maintenance');
  });

  it('fails with the reason when a VM cannot move, after moving the others', async () => {
    const c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: 1000 } });
    clusters.push(c);
    const [h1, h2] = c.hosts.map((h) => h.agent.hostId!);
    await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { gpu: 'yes' } });
    await create(c, { name: 'needs-gpu', placementLabels: { gpu: 'yes' } });
    await create(c, { name: 'free-1', placementLabels: {} });
    await create(c, { name: 'free-2', placementLabels: {} });
    await c.api('POST', `/api/v1/vms/free-1/migrate`, { host: 'host-1' }).then((r) => r.body.task && c.waitTask(r.body.task.id));
    await c.api('POST', `/api/v1/vms/free-2/migrate`, { host: 'host-1' }).then((r) => r.body.task && c.waitTask(r.body.task.id));
    assert.equal((await onHost(c, h1)).length, 3);
    const drain = await c.api('POST', '/api/v1/hosts/host-1/drain');
    const task = await c.waitTask(drain.body.task.id, 30_000);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'DRAIN_INCOMPLETE');
    assert.match(task.error.message, /1 VMs could not be moved: needs-gpu: .*labels do not match/);
    const left = await onHost(c, h1);
    assert.deepEqual(left.map((v) => v.name), ['needs-gpu']);
    assert.equal((await onHost(c, h2)).length, 2);
  });

  it('carries on after control restarts: the request is in the host spec', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'awan-drain-'));
    const db = `sqlite:${join(dir, 'awan.db')}`;
    const c = await startCluster({ hosts: 2, db, control: { heartbeatIntervalMs: 1000 } });
    // The cluster closes the control it started; this test closes the one it starts in its place.
    let next: Control | undefined;
    try {
    const hostId = c.hosts[0].agent.hostId!;
    for (let i = 1; i <= 4; i++) await create(c, { name: `r-${i}` });
    const before = await onHost(c, hostId);
    assert.ok(before.length > 0);
    // The controllers are held, so nothing moves before control goes down.
    await c.control.manager.stop();
    const drain = await c.api('POST', '/api/v1/hosts/host-1/drain');
    assert.equal(drain.status, 202);
    assert.equal((await c.api('GET', `/api/v1/tasks/${drain.body.task.id}`)).body.state, 'running');
    assert.equal((await onHost(c, hostId)).length, before.length);

    const port = Number(new URL(c.url).port);
    await c.control.close();
    next = await createControl({
      db, adminPassword: 'admin-password', heartbeatIntervalMs: 1000, log: createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent'),
      poolDir: join(c.dir, 'pool'), imageDirs: [c.dir], auth: { scryptCost: TEST_SCRYPT_COST },
    });
    await next.start();
    await next.app.listen({ port, host: '127.0.0.1' });
    c.control = next;
    const task = await c.waitTask(drain.body.task.id, 30_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal((await onHost(c, hostId)).length, 0);
    for (const v of before) assert.equal((await c.api('GET', `/api/v1/vms/${v.id}`)).body.phase, 'running');
    await until(async () => (await c.api('GET', '/api/v1/hosts/host-1')).body.state === 'maintenance', { what: 'host-1 in maintenance' });
    } finally {
      for (const h of c.hosts) {
        await h.agent.stop();
        await h.driver.close();
      }
      await (next ?? c.control).close();
      rmSync(c.dir, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
