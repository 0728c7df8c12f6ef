// Memory across hosts: a donor's RAM plugged into a VM as swap, a move to a host with room, a donor that
// goes into maintenance (its loan moves) or dies holding the guest's pages (the VM restarts), and a restart
// of control in the middle of a grant.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { borrow, createVm, holds, lease, leaseIn, lentBy, vm } from '../support/leases.ts';
import { until } from '../until.ts';

describe('memory from other hosts', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 3, control: { hostLeaseMs: 1500, failoverMarginMs: 200, hostFlapFailures: 0, memoryPolicy: { pressureCheckMs: 3_600_000 } } });
    await createVm(c, { name: 'r1', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 2048 });
  });
  after(async () => { await c?.close(); });

  const hostOf = async (name: string) => (await vm(c, name)).hostId as string;
  const byId = async (id: string) => {
    const hosts = (await c.api('GET', '/api/v1/hosts')).body.items;
    return c.hosts.find((h) => h.name === hosts.find((x: any) => x.id === id).name)!;
  };
  const otherHost = async (exclude: string[]) => (await c.api('GET', '/api/v1/hosts')).body.items.find((h: any) => !exclude.includes(h.id) && h.state === 'ready');

  it('plugs a donor\'s RAM into the VM, shows it lent and borrowed, and leaves nothing behind on return', async () => {
    const home = await hostOf('r1');
    const donor = await otherHost([home]);
    const r = await borrow(c, { vmId: 'r1', sizeMiB: 512, kind: 'temporary', mechanism: 'remote', donorHostId: donor.name });
    assert.equal((await c.waitTask(r.task.id)).state, 'succeeded');
    const l = await lease(c, r.lease.id);
    assert.equal(l.mechanism, 'remote');
    assert.equal(l.donorHostId, donor.id);
    const donorSim = await byId(donor.id);
    assert.equal(await lentBy(c, donorSim), 512);
    await until(async () => (await vm(c, 'r1')).memoryStats?.remoteMiB === 512, { what: 'the VM reports its remote memory' });
    await until(async () => (await c.api('GET', `/api/v1/hosts/${donor.id}`)).body.memoryLentMiB === 512, { what: 'the donor reports what it lends' });
    assert.equal((await c.api('GET', `/api/v1/hosts/${home}`)).body.memoryBorrowedMiB, 512);
    assert.match(await (await fetch(`${c.url}/metrics`)).text(), /awan_memory_lent_mib 512/);
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
    assert.equal(await lentBy(c, donorSim), 0, 'the export is gone');
    const status = await (await byId(home)).driver.status((await vm(c, 'r1')).id);
    assert.equal(status.remoteMemory, undefined, 'the device is gone');
  });

  it('moves the VM to a host with room, and gives the memory back there', async () => {
    const home = await hostOf('r1');
    const r = await borrow(c, { vmId: 'r1', sizeMiB: 512, kind: 'temporary', mechanism: 'migrate' });
    const task = await c.waitTask(r.task.id, 20_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const moved = await hostOf('r1');
    assert.notEqual(moved, home);
    assert.equal((await lease(c, r.lease.id)).borrowerHostId, moved);
    await holds(c, 'r1', 1536);
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
    await holds(c, 'r1', 1024);
  });

  it('moves a loan to another donor when its donor goes into maintenance', async () => {
    const home = await hostOf('r1');
    const donor = await otherHost([home]);
    const third = await otherHost([home, donor.id]);
    const r = await borrow(c, { vmId: 'r1', sizeMiB: 256, kind: 'temporary', mechanism: 'remote', donorHostId: donor.id });
    await leaseIn(c, r.lease.id, 'active');
    const drain = await c.api('POST', `/api/v1/hosts/${donor.id}/drain`);
    assert.equal(drain.status, 202, JSON.stringify(drain.body));
    const moved = await until(async () => {
      const l = await lease(c, r.lease.id);
      return l.donorHostId === third.id ? l : undefined;
    }, { what: 'the loan moved to the third host' });
    assert.equal(moved.state, 'active');
    assert.equal(await lentBy(c, await byId(donor.id)), 0);
    assert.equal(await lentBy(c, await byId(third.id)), 256);
    const events = (await c.api('GET', `/api/v1/events?object=${r.lease.id}&limit=50`)).body.items.map((e: any) => e.type);
    assert.ok(events.includes('memory.lease.moved'), String(events));
    await c.waitTask(drain.body.task.id);
    assert.equal((await c.api('POST', `/api/v1/hosts/${donor.id}/activate`)).status < 300, true);
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
    assert.equal(await lentBy(c, await byId(third.id)), 0);
  });

  it('restarts the VM, and says why, when its donor dies holding its pages', async () => {
    const home = await hostOf('r1');
    const donor = await otherHost([home]);
    const r = await borrow(c, { vmId: 'r1', sizeMiB: 256, kind: 'temporary', mechanism: 'remote', donorHostId: donor.id });
    await leaseIn(c, r.lease.id, 'active');
    const id = (await vm(c, 'r1')).id;
    const homeSim = await byId(home);
    homeSim.driver.useSwap(id, 100);
    await until(async () => (await vm(c, 'r1')).memoryStats?.swapUsedMiB === 100, { what: 'the guest swapped out to the donor' });
    await c.stopAgent(await byId(donor.id));
    const failed = await leaseIn(c, r.lease.id, 'failed', 20_000);
    assert.match(failed.message, /died holding 100 MiB/);
    const events = (await c.api('GET', `/api/v1/events?object=${r.lease.id}&limit=50`)).body.items.map((e: any) => e.type);
    assert.ok(events.includes('memory.lease.donor-lost'), String(events));
    assert.equal((await homeSim.driver.status(id)).remoteMemory, undefined, 'the dead device is unplugged');
    const reboots = (await c.api('GET', `/api/v1/tasks?targetId=${id}&kind=reboot`)).body.items;
    assert.equal(reboots.length, 1, 'the VM was restarted');
    assert.equal((await c.waitTask(reboots[0].id)).state, 'succeeded');
  });
});

describe('a restart of control in the middle of a grant', () => {
  let c: Cluster;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'awan-lease-restart-'));
    // The balloon takes its time, so that the grant is still under way when control goes away.
    c = await startCluster({ hosts: 1, sim: { balloonMiBPerS: 256 }, db: `sqlite:${join(dir, 'awan.db')}`, control: { memoryPolicy: { pressureCheckMs: 3_600_000 } } });
    await createVm(c, { name: 'slow', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 4096 });
  });
  after(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('carries on from the state in SQL', async () => {
    const r = await borrow(c, { vmId: 'slow', sizeMiB: 1024, kind: 'temporary', mechanism: 'grow' });
    await leaseIn(c, r.lease.id, 'granting');
    await c.restartControl();
    const task = await c.waitTask(r.task.id, 20_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal((await lease(c, r.lease.id)).state, 'active');
    await holds(c, 'slow', 2048);
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal((await c.waitTask(back.body.task.id, 20_000)).state, 'succeeded');
    await holds(c, 'slow', 1024, 15_000);
  });
});
