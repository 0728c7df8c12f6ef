// Moving a running VM's memory through the API: the balloon goes down and back up, and a target below what
// the guest uses is refused by the host with the reason.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('VM memory', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1 });
    const r = await c.api('POST', '/api/v1/vms', { name: 'mem-1', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 2048 });
    await c.waitTask(r.body.task.id);
  });
  after(async () => { await c?.close(); });

  it('shrinks and grows the memory the guest has', async () => {
    for (const target of [512, 1536]) {
      const r = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: target });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const task = await c.waitTask(r.body.task.id);
      assert.equal(task.state, 'succeeded', JSON.stringify(task));
      await until(async () => (await c.api('GET', '/api/v1/vms/mem-1')).body.memoryActualMiB === target, { what: `memoryActualMiB ${target}` });
      const vm = (await c.api('GET', '/api/v1/vms/mem-1')).body;
      assert.equal((await c.hosts[0].driver.status(vm.id)).memoryActualMiB, target);
    }
  });

  it('refuses a target below what the guest uses, and one above its maximum', async () => {
    const low = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: 16 });
    const task = await c.waitTask(low.body.task.id);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'INSUFFICIENT_MEMORY');
    const high = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: 4096 });
    assert.equal(high.status, 400);
    assert.match(high.body.error.message, /maxMemoryMiB/);
  });
});
