// Memory leases on one host: grow and give back, expiry, make-permanent across a restart of the VM,
// reclaim from a neighbour, the requests that are refused, and pagination.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { borrow, createVm, holds, lease, leaseIn, vm } from '../support/leases.ts';
import { until } from '../until.ts';

describe('memory leases', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1, control: { memoryPolicy: { pressureCheckMs: 3_600_000 } } });
    await createVm(c, { name: 'b1', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 4096 });
    await createVm(c, { name: 'n1', cpus: 1, memoryMiB: 4096 });
  });
  after(async () => { await c?.close(); });

  const target = async (name: string) => (await c.control.vmStore.find(name))!.memory_target_mib;

  it('grows a VM for a while and gives everything back on return', async () => {
    const r = await borrow(c, { vmId: 'b1', sizeMiB: 512, kind: 'temporary', mechanism: 'grow' });
    const task = await c.waitTask(r.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const l = await lease(c, r.lease.id);
    assert.equal(l.state, 'active');
    assert.equal(l.mechanism, 'grow');
    assert.equal(l.borrowerHostId, (await vm(c, 'b1')).hostId);
    await holds(c, 'b1', 1536);
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal(back.status, 202, JSON.stringify(back.body));
    assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
    assert.equal((await lease(c, r.lease.id)).state, 'returned');
    await holds(c, 'b1', 1024);
    assert.equal(await target('b1'), null, 'the memory target is as it was before the lease');
    const again = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal(again.status, 409);
  });

  it('returns a temporary lease by itself once its ttl runs out', async () => {
    const r = await borrow(c, { vmId: 'b1', sizeMiB: 256, kind: 'temporary', ttlS: 1 });
    const active = await leaseIn(c, r.lease.id, 'active');
    assert.ok(active.expiresAt);
    await holds(c, 'b1', 1280);
    const done = await leaseIn(c, r.lease.id, 'returned');
    assert.match(done.message, /expired/);
    await holds(c, 'b1', 1024);
    assert.equal(await target('b1'), null);
    const types = (await c.api('GET', `/api/v1/events?object=${r.lease.id}&limit=50`)).body.items?.map((e: any) => e.type) ?? [];
    for (const t of ['memory.lease.requested', 'memory.lease.granting', 'memory.lease.active', 'memory.lease.returning', 'memory.lease.returned']) assert.ok(types.includes(t), `${t} in ${types}`);
  });

  it('balloons a neighbour down when the host has no room, and gives it back', async () => {
    const host = c.hosts[0].driver;
    const h = (await c.api('GET', '/api/v1/hosts')).body.items[0];
    // Leave the host a little above its pressure threshold (20 %), too little to grow into.
    const floor = Math.ceil(h.memoryMiB * 0.2);
    host.setHostUsedMiB((await host.facts()).memoryFreeMiB - floor - 100);
    await until(async () => (await c.api('GET', `/api/v1/hosts/${h.id}`)).body.memoryFreeMiB === floor + 100, { what: 'the host reports little free memory' });
    const refused = await c.api('POST', '/api/v1/memory/leases', { vmId: 'b1', sizeMiB: 512, kind: 'temporary', mechanism: 'grow' });
    assert.equal(refused.status, 422, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, 'NO_CAPACITY');
    const r = await borrow(c, { vmId: 'b1', sizeMiB: 512, kind: 'temporary' });
    assert.equal((await c.waitTask(r.task.id)).state, 'succeeded');
    assert.equal((await lease(c, r.lease.id)).mechanism, 'reclaim');
    await holds(c, 'b1', 1536);
    const n1 = await vm(c, 'n1');
    assert.ok(n1.memoryActualMiB < 4096, `n1 gave memory back (${n1.memoryActualMiB} MiB)`);
    assert.ok(n1.memoryActualMiB >= n1.memoryStats.usedMiB + 64, 'never below what the guest uses plus the margin');
    const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
    await holds(c, 'b1', 1024);
    await holds(c, 'n1', 4096);
    assert.equal(await target('n1'), null);
    host.setHostUsedMiB(0);
  });

  it('makes a lease permanent: the VM keeps the memory across a restart', async () => {
    const r = await borrow(c, { vmId: 'b1', sizeMiB: 512, kind: 'temporary', ttlS: 3600 });
    await leaseIn(c, r.lease.id, 'active');
    const p = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/make-permanent`);
    assert.equal(p.status, 202, JSON.stringify(p.body));
    const task = await c.waitTask(p.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const l = await lease(c, r.lease.id);
    assert.equal(l.kind, 'permanent');
    assert.equal(l.expiresAt, null);
    assert.equal((await vm(c, 'b1')).memoryMiB, 1536);
    const stop = await c.api('POST', '/api/v1/vms/b1/stop', { force: true });
    assert.equal((await c.waitTask(stop.body.task.id)).state, 'succeeded');
    const start = await c.api('POST', '/api/v1/vms/b1/start');
    assert.equal((await c.waitTask(start.body.task.id)).state, 'succeeded');
    await holds(c, 'b1', 1536);
    const ret = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
    assert.equal(ret.status, 409, 'a permanent lease is part of the VM');
    // Asked permanent from the start: the same end, in one request.
    const direct = await borrow(c, { vmId: 'b1', sizeMiB: 256, kind: 'permanent' });
    assert.equal((await c.waitTask(direct.task.id)).state, 'succeeded');
    assert.equal((await lease(c, direct.lease.id)).mechanism, 'grow');
    assert.equal((await vm(c, 'b1')).memoryMiB, 1792);
    await holds(c, 'b1', 1792);
  });

  it('refuses bad requests with a code, and writes nothing', async () => {
    const before = (await c.api('GET', '/api/v1/memory/leases?limit=1000')).body.items.length;
    const cases: [unknown, number, string?][] = [
      [{ vmId: 'nope', sizeMiB: 256, kind: 'temporary' }, 404, 'VM_NOT_FOUND'],
      [{ vmId: 'b1', sizeMiB: 0, kind: 'temporary' }, 400],
      [{ vmId: 'b1', sizeMiB: 4 * 1024 * 1024, kind: 'temporary' }, 422, 'NO_CAPACITY'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'forever' }, 400],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'temporary', sizeMb: 1 }, 400],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'permanent', ttlS: 60 }, 400, 'VALIDATION_FAILED'],
      [{ vmId: 'b1', sizeMiB: 4096, kind: 'temporary', mechanism: 'grow' }, 422, 'UNSUPPORTED'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'temporary', mechanism: 'remote' }, 422, 'NO_CAPACITY'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'temporary', mechanism: 'grow', donorHostId: 'host-1' }, 400, 'VALIDATION_FAILED'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'temporary', donorHostId: 'no-such-host' }, 404, 'HOST_NOT_FOUND'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'temporary', donorHostId: 'host-1' }, 422, 'UNSUPPORTED'],
      [{ vmId: 'b1', sizeMiB: 256, kind: 'permanent', mechanism: 'reclaim' }, 422, 'UNSUPPORTED'],
    ];
    for (const [body, status, code] of cases) {
      const r = await c.api('POST', '/api/v1/memory/leases', body);
      assert.equal(r.status, status, `${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
      if (code) assert.equal(r.body.error.code, code, JSON.stringify(r.body));
    }
    assert.equal((await c.api('GET', '/api/v1/memory/leases/no-such-lease')).status, 404);
    assert.equal((await c.api('POST', '/api/v1/memory/leases/no-such-lease/return')).status, 404);
    assert.equal((await c.api('GET', '/api/v1/memory/leases?state=gone')).status, 400);
    assert.equal((await c.api('GET', '/api/v1/memory/leases?limit=1000')).body.items.length, before, 'nothing was written');
  });

  it('lists leases with cursor pagination, and filters by VM', async () => {
    const all = (await c.api('GET', '/api/v1/memory/leases?limit=1000')).body.items;
    assert.ok(all.length >= 3);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: any = (await c.api('GET', `/api/v1/memory/leases?limit=1${cursor ? `&cursor=${cursor}` : ''}`)).body;
      seen.push(...page.items.map((l: any) => l.id));
      cursor = page.nextCursor;
    } while (cursor);
    assert.deepEqual(seen, all.map((l: any) => l.id));
    const ofB1 = (await c.api('GET', '/api/v1/memory/leases?vm=b1')).body.items;
    assert.equal(ofB1.length, all.length);
    assert.equal((await c.api('GET', '/api/v1/memory/leases?vm=n1')).body.items.length, 0);
  });

  it('shows leases and memory in the metrics, and every route in the OpenAPI document', async () => {
    const text = await (await fetch(`${c.url}/metrics`)).text();
    assert.match(text, /awan_memory_leases\{state="returned"\} [1-9]/);
    assert.match(text, /awan_memory_lease_grant_seconds_count\{mechanism="grow"\} [1-9]/);
    assert.match(text, /awan_memory_lent_mib 0/);
    const doc = (await (await fetch(`${c.url}/api/v1/openapi.json`)).json()) as any;
    for (const path of ['/api/v1/memory/leases', '/api/v1/memory/leases/{id}', '/api/v1/memory/leases/{id}/return', '/api/v1/memory/leases/{id}/make-permanent']) assert.ok(doc.paths[path], path);
  });
});

describe('memory pressure', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1, control: { memoryPolicy: { pressureCheckMs: 100 } } });
    await createVm(c, { name: 'idle', cpus: 1, memoryMiB: 4096 });
  });
  after(async () => { await c?.close(); });

  it('balloons idle VMs down before the host runs out, and gives the memory back after', async () => {
    const h = (await c.api('GET', '/api/v1/hosts')).body.items[0];
    c.hosts[0].driver.setHostUsedMiB((await c.hosts[0].driver.facts()).memoryFreeMiB - 1500);
    const idle = await until(async () => {
      const v = await vm(c, 'idle');
      return v.memoryActualMiB < 4096 ? v : undefined;
    }, { what: 'the idle VM ballooned down' });
    assert.ok(idle.memoryActualMiB >= 1024 + 64, `not below its floor (${idle.memoryActualMiB} MiB)`);
    const events = (await c.api('GET', `/api/v1/events?type=memory.pressure.reclaimed&limit=10`)).body.items;
    assert.ok(events.length >= 1);
    await until(async () => (await c.api('GET', `/api/v1/hosts/${h.id}`)).body.memoryFreeMiB >= Math.ceil(h.memoryMiB * 0.2), { what: 'the host back above its threshold' });
    c.hosts[0].driver.setHostUsedMiB(0);
    await holds(c, 'idle', 4096);
  });
});
