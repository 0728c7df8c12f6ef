// Placement through the API: host labels steer VMs, anti-affinity keeps a group apart, and a drained host
// is emptied by live migration and gets no new VMs until it is activated.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';

describe('placement', () => {
  let c: Cluster;
  before(async () => { c = await startCluster({ hosts: 3 }); });
  after(async () => { await c?.close(); });

  const create = async (body: Record<string, unknown>) => {
    const r = await c.api('POST', '/api/v1/vms', { cpus: 1, memoryMiB: 256, ...body });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    return c.waitTask(r.body.task.id);
  };
  const hostOf = async (name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body.hostId;

  it('places a VM that asks for a label on a host that has it', async () => {
    const labelled = await c.api('PATCH', '/api/v1/hosts/host-2', { labels: { disk: 'ssd' }, zone: 'b' });
    assert.equal(labelled.status, 200);
    assert.deepEqual(labelled.body.labels, { disk: 'ssd' });
    for (const n of [1, 2, 3]) assert.equal((await create({ name: `ssd-${n}`, placementLabels: { disk: 'ssd' } })).state, 'succeeded');
    for (const n of [1, 2, 3]) assert.equal(await hostOf(`ssd-${n}`), labelled.body.id);
    const none = await create({ name: 'gpu-1', placementLabels: { gpu: 'yes' } });
    assert.equal(none.state, 'failed');
    assert.match(none.error.message, /3 labels do not match/);
  });

  it('keeps VMs of one anti-affinity group on different hosts', async () => {
    for (const n of [1, 2, 3]) assert.equal((await create({ name: `db-${n}`, antiAffinity: 'db' })).state, 'succeeded');
    const hosts = await Promise.all([1, 2, 3].map((n) => hostOf(`db-${n}`)));
    assert.equal(new Set(hosts).size, 3);
    const fourth = await create({ name: 'db-4', antiAffinity: 'db' });
    assert.equal(fourth.state, 'failed');
    assert.match(fourth.error.message, /anti-affinity group db/);
  });

  it('drains a host by live migration, then keeps it empty until activated', async () => {
    const host = (await c.api('GET', '/api/v1/hosts/host-1')).body;
    const before = (await c.api('GET', `/api/v1/vms?host=${host.id}`)).body.items.filter((v: any) => v.phase === 'running');
    assert.ok(before.length > 0);
    const drain = await c.api('POST', '/api/v1/hosts/host-1/drain');
    assert.equal(drain.status, 202);
    const task = await c.waitTask(drain.body.task.id, 30_000);
    // db-1 cannot leave: the other two hosts already run a VM of its anti-affinity group.
    const antiAffine = before.filter((v: any) => v.antiAffinity === 'db');
    assert.equal(antiAffine.length, 1);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'DRAIN_INCOMPLETE');
    assert.match(task.error.message, /anti-affinity group db/);
    await c.waitTask((await c.api('DELETE', `/api/v1/vms/${antiAffine[0].name}`)).body.task.id);
    const again = await c.waitTask((await c.api('POST', '/api/v1/hosts/host-1/drain')).body.task.id, 30_000);
    assert.equal(again.state, 'succeeded', JSON.stringify(again));
    assert.equal((await c.api('GET', `/api/v1/vms?host=${host.id}`)).body.items.length, 0);
    assert.equal((await c.api('GET', '/api/v1/hosts/host-1')).body.state, 'maintenance');
    for (const v of before.filter((v: any) => v.antiAffinity !== 'db')) {
      assert.equal((await c.api('GET', `/api/v1/vms/${v.id}`)).body.phase, 'running');
    }
    for (let i = 0; i < 4; i++) await create({ name: `after-drain-${i}` });
    assert.equal((await c.api('GET', `/api/v1/vms?host=${host.id}`)).body.items.length, 0, 'no new VM on a host in maintenance');
    const activated = await c.api('POST', '/api/v1/hosts/host-1/activate');
    assert.equal(activated.body.state, 'ready');
    await create({ name: 'after-activate' });
    assert.equal(await hostOf('after-activate'), host.id, 'the empty host is the spread choice again');
  });
});
