import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from './support/cluster.ts';
import { until } from './until.ts';

describe('smoke', () => {
  let c: Cluster;
  before(async () => { c = await startCluster({ hosts: 3 }); });
  after(async () => { await c?.close(); });
  it('creates a VM that runs', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'vm1', cpus: 1, memoryMiB: 512 });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const t = await c.waitTask(r.body.task.id);
    assert.equal(t.state, 'succeeded', JSON.stringify(t));
    const vm = (await c.api('GET', '/api/v1/vms/vm1')).body;
    assert.equal(vm.phase, 'running');
  });
});
