// A running migration can be cancelled: the task ends cancelled and the VM keeps running on its host.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('migration cancel', () => {
  let c: Cluster;
  // A slow link: a 4 GiB VM takes about a minute to copy, long enough to cancel.
  before(async () => { c = await startCluster({ hosts: 2, sim: { migrateMiBPerS: 64 } }); });
  after(async () => { await c?.close(); });

  it('cancels a migration in flight', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'big', cpus: 2, memoryMiB: 4096 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const before = (await c.api('GET', '/api/v1/vms/big')).body;
    const m = await c.api('POST', '/api/v1/vms/big/migrate');
    await until(async () => /copying memory/.test((await c.api('GET', `/api/v1/tasks/${m.body.task.id}`)).body.message ?? ''), { what: 'copying' });
    const cancel = await c.api('POST', `/api/v1/tasks/${m.body.task.id}/cancel`);
    assert.equal(cancel.status, 202, JSON.stringify(cancel.body));
    const task = await c.waitTask(m.body.task.id);
    assert.equal(task.state, 'cancelled');
    const vm = (await c.api('GET', '/api/v1/vms/big')).body;
    assert.equal(vm.hostId, before.hostId);
    assert.equal(vm.phase, 'running');
    assert.equal(vm.targetHostId, null);
    const target = c.hosts.find((h) => h.agent.hostId !== before.hostId)!;
    assert.ok(!(await target.driver.list()).some((v) => v.id === vm.id), 'nothing left on the target');
    const again = await c.api('POST', `/api/v1/tasks/${m.body.task.id}/cancel`);
    assert.equal(again.status, 409);
  });

  it('refuses to cancel a task that cannot be cancelled', async () => {
    // A host that takes a minute to boot a VM, so the create task is still running when it is asked.
    await c.addHost('slow', { bootDelayMs: 60_000 });
    await c.api('PATCH', '/api/v1/hosts/slow', { labels: { speed: 'slow' } });
    const created = await c.api('POST', '/api/v1/vms', { name: 'slowpoke', cpus: 1, memoryMiB: 256, placementLabels: { speed: 'slow' } });
    const r = await c.api('POST', `/api/v1/tasks/${created.body.task.id}/cancel`);
    assert.equal(r.status, 422);
    assert.equal(r.body.error.code, 'UNSUPPORTED');
    assert.match(r.body.error.message, /only migrations/);
  });
});
