// Replicated storage with simulated hosts: a VM's disk lives on its host with a synchronous copy on a second
// one; when its host fails the VM restarts on the copy's host, the copy becomes its disk and a new copy is
// made on a third host; the failed host's disk is deleted once it is back. A VM whose copy was not in step
// is not restarted from it. A live migration (a drain's too) moves the VM onto its copy, which becomes its
// disk. The links are real loopback TCP that the tests cut.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, type TestHost, startCluster } from '../support/cluster.ts';
import { type Link, createLink } from '../support/link.ts';
import { until } from '../until.ts';

const control = { inspectImage: async (img: { path?: string }) => ({ sizeMiB: 1024, path: img.path! }), hostLeaseMs: 1000, failoverMarginMs: 500, haHostFailures: 0 };

async function setUp(hosts: number): Promise<{ c: Cluster; link: Link; first: TestHost }> {
  const c = await startCluster({ control });
  const link = await createLink(c.url);
  const first = await c.addHost('host-1', undefined, link.url);
  assert.equal((await c.api('POST', '/api/v1/images', { name: 'tmpl', format: 'qcow2', path: join(c.dir, 'tmpl.qcow2') })).status, 201);
  return { c, link, first, ...(await addHosts(c, hosts - 1)) };
}

async function addHosts(c: Cluster, n: number): Promise<object> {
  for (let i = 2; i <= n + 1; i++) await c.addHost(`host-${i}`);
  return {};
}

/** One describe's cluster of one host (behind a link the tests cut), closed after its tests. */
function clusterFor(): { c: Cluster; link: Link; first: TestHost } {
  const t = {} as { c: Cluster; link: Link; first: TestHost };
  before(async () => {
    Object.assign(t, await setUp(1));
  });
  after(async () => {
    await t.c?.close();
    await t.link?.close();
  });
  return t;
}

const hostName = (c: Cluster, id: string) => c.hosts.find((h) => h.agent.hostId === id)?.name;
const localPool = (c: Cluster, name: string) => c.memory.pool(join(c.hosts.find((h) => h.name === name)!.dataDir, 'local-pool'))!;
const volumeOf = async (c: Cluster, vmId: string) => (await c.api('GET', `/api/v1/volumes?vm=${vmId}`)).body.items[0];
const vmOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body;

async function createOnFirst(c: Cluster, name: string): Promise<any> {
  const r = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 128, image: 'tmpl', storage: 'replicated', ha: true });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
  return r.body.vm;
}

async function syncedCopy(c: Cluster, vmId: string, what: string): Promise<any> {
  return until(async () => {
    const v = await volumeOf(c, vmId);
    return v?.replica?.state === 'synced' ? v : undefined;
  }, { what, timeoutMs: 15_000 });
}

describe('a VM on replicated storage', () => {
  let c: Cluster;
  let link: Link;
  let first: TestHost;
  let vmId: string;
  let diskName: string;
  let copyHost: string;

  before(async () => {
    ({ c, link, first } = await setUp(1));
    vmId = (await createOnFirst(c, 'rep')).id;
    await addHosts(c, 2);
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('keeps its disk on its host and a synced copy on a second host', async () => {
    const vm = await vmOf(c, 'rep');
    assert.equal(vm.storage, 'replicated');
    assert.equal(vm.hostId, first.agent.hostId);
    const v = await syncedCopy(c, vmId, 'a synced copy');
    assert.equal(v.replicated, true);
    assert.notEqual(v.replica.hostId, vm.hostId, 'the copy is on another host');
    copyHost = hostName(c, v.replica.hostId)!;
    diskName = v.name;
    assert.ok(localPool(c, 'host-1').names().includes(diskName), 'the disk is in its host\'s local pool');
    assert.ok(localPool(c, copyHost).names().includes(diskName), 'the copy is in the second host\'s local pool');
    const status = (await first.driver.list()).find((s) => s.id === vmId);
    assert.equal(status?.replicas?.[0]?.state, 'synced', 'the VM mirrors into the copy');
    const events = (await c.api('GET', `/api/v1/events?object=${v.id}`)).body.items.map((e: { type: string }) => e.type);
    assert.ok(events.includes('volume.replica.synced'), events.join(', '));
  });

  it('restarts on the copy\'s host when its host fails, and makes a new copy on a third host', async () => {
    link.cut();
    const vm = await until(async () => {
      const v = await vmOf(c, 'rep');
      return v.phase === 'running' && v.hostId !== first.agent.hostId ? v : undefined;
    }, { what: 'rep running elsewhere', timeoutMs: 15_000 });
    assert.equal(hostName(c, vm.hostId), copyHost, 'it restarted where its copy was');
    const v = await syncedCopy(c, vmId, 'a new synced copy');
    const copyPool = (await c.api('GET', `/api/v1/pools/${copyHost}-local`)).body;
    assert.equal(v.poolId, copyPool.id, 'the copy became the disk');
    const third = hostName(c, v.replica.hostId)!;
    assert.ok(third !== copyHost && third !== 'host-1', `the new copy is on a third host, not ${third}`);
    assert.ok(localPool(c, third).names().includes(diskName));
    const events = (await c.api('GET', `/api/v1/events?object=${v.id}`)).body.items.map((e: { type: string }) => e.type);
    assert.ok(events.includes('volume.replica.promoted'), events.join(', '));
  });

  it('deletes the failed host\'s disk once that host is back, and runs the VM once', async () => {
    assert.ok(localPool(c, 'host-1').names().includes(diskName), 'host-1 still has its old disk while it is away');
    link.restore();
    await until(async () => (await c.api('GET', '/api/v1/hosts/host-1')).body.state === 'ready', { what: 'host-1 back' });
    await until(async () => !localPool(c, 'host-1').names().includes(diskName), { what: 'the old disk deleted', timeoutMs: 15_000 });
    const running = [];
    for (const h of c.hosts) if ((await h.driver.list()).some((s) => s.id === vmId && s.state === 'running')) running.push(h.name);
    assert.deepEqual(running, [copyHost]);
  });

  it('deletes its disk and its copy with the VM', async () => {
    const v = await volumeOf(c, vmId);
    const where = [hostName(c, (await vmOf(c, 'rep')).hostId)!, hostName(c, v.replica.hostId)!];
    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/rep')).body.task.id)).state, 'succeeded');
    for (const h of where) await until(async () => !localPool(c, h).names().includes(diskName), { what: `the copy on ${h} deleted`, timeoutMs: 15_000 });
  });
});

describe('a VM on replicated storage whose copy is lost', () => {
  const t = clusterFor();

  it('is failed with the reason, not restarted from an outdated copy, when its host fails', async () => {
    const { c, link, first } = t;
    const vm = await createOnFirst(c, 'alone');
    const second = await c.addHost('host-2');
    const v = await syncedCopy(c, vm.id, 'a synced copy');
    assert.equal(v.replica.hostId, second.agent.hostId);
    // The copy's host goes: with no third host, the disk has no copy.
    await c.stopAgent(second);
    await until(async () => (await volumeOf(c, vm.id)).replica === null, { what: 'the copy given up', timeoutMs: 15_000 });
    link.cut();
    await c.startAgent(second); // back, with room, while host-1 is away: still no copy to restart from
    const failed = await until(async () => {
      const x = await vmOf(c, 'alone');
      return x.phase === 'failed' ? x : undefined;
    }, { what: 'alone failed', timeoutMs: 15_000 });
    assert.equal(failed.hostId, first.agent.hostId, 'it stays with its disk');
    assert.match(failed.message, /cannot restart elsewhere/);
    assert.ok(!(await second.driver.list()).some((s) => s.id === vm.id), 'nothing runs on host-2');
  });
});

describe('a VM on replicated storage that live-migrates', () => {
  let c: Cluster;
  let link: Link;
  let vmId: string;

  before(async () => {
    ({ c, link } = await setUp(1));
    vmId = (await createOnFirst(c, 'mover')).id;
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('is refused while its disk has no copy to move onto', async () => {
    const r = await c.api('POST', '/api/v1/vms/mover/migrate');
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'INVALID_STATE');
    assert.match(r.body.error.message, /no copy/);
    assert.equal((await vmOf(c, 'mover')).phase, 'running', 'nothing changed');
  });

  it('moves only to the host of its copy', async () => {
    await addHosts(c, 2);
    const v = await syncedCopy(c, vmId, 'a synced copy');
    const other = c.hosts.find((h) => h.agent.hostId !== v.replica.hostId && h.name !== 'host-1')!;
    const r = await c.api('POST', '/api/v1/vms/mover/migrate', { host: other.name });
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'UNSUPPORTED');
    assert.equal(r.body.error.details.copyHostId, v.replica.hostId);
  });

  it('moves onto its copy, which becomes its disk, and gets a new copy on another host', async () => {
    const before = await syncedCopy(c, vmId, 'a synced copy');
    const copyHost = hostName(c, before.replica.hostId)!;
    const r = await c.api('POST', '/api/v1/vms/mover/migrate');
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const task = await c.waitTask(r.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const vm = await vmOf(c, 'mover');
    assert.equal(hostName(c, vm.hostId), copyHost, 'it runs where its copy was');
    const after = await until(async () => {
      const v = await volumeOf(c, vmId);
      return v?.replica?.state === 'synced' && v.replica.hostId !== vm.hostId ? v : undefined;
    }, { what: 'a new synced copy', timeoutMs: 15_000 });
    assert.equal(after.poolId, (await c.api('GET', `/api/v1/pools/${copyHost}-local`)).body.id, 'the copy became the disk');
    const running = [];
    for (const h of c.hosts) if ((await h.driver.list()).some((s) => s.id === vmId && s.state === 'running')) running.push(h.name);
    assert.deepEqual(running, [copyHost], 'it runs once');
    // The old disk goes, unless the new copy was made on the same host.
    const newCopy = hostName(c, after.replica.hostId)!;
    if (newCopy !== 'host-1') await until(async () => !localPool(c, 'host-1').names().includes(after.name), { what: 'the old disk deleted', timeoutMs: 15_000 });
    const events = (await c.api('GET', `/api/v1/events?object=${after.id}`)).body.items.map((e: { type: string }) => e.type);
    assert.ok(events.includes('volume.replica.promoted'), events.join(', '));
  });

  it('leaves a host that is drained, and its copies leave it too', async () => {
    const v = await syncedCopy(c, vmId, 'a synced copy');
    const home = hostName(c, (await vmOf(c, 'mover')).hostId)!;
    const copyOn = hostName(c, v.replica.hostId)!;
    // Drain the VM's host: it moves onto its copy.
    const drain = await c.api('POST', `/api/v1/hosts/${home}/drain`);
    assert.equal(drain.status, 202, JSON.stringify(drain.body));
    assert.equal((await c.waitTask(drain.body.task.id)).state, 'succeeded');
    assert.equal(hostName(c, (await vmOf(c, 'mover')).hostId), copyOn);
    // Its new copy is not on the host in maintenance; put that host back, then drain the copy's host.
    const fresh = await until(async () => {
      const x = await volumeOf(c, vmId);
      return x?.replica?.state === 'synced' ? x : undefined;
    }, { what: 'a new synced copy', timeoutMs: 15_000 });
    assert.notEqual(hostName(c, fresh.replica.hostId), home, 'no copy is made on a host in maintenance');
    assert.equal((await c.api('POST', `/api/v1/hosts/${home}/activate`)).status, 200);
    const copyHost = hostName(c, fresh.replica.hostId)!;
    const drainCopy = await c.api('POST', `/api/v1/hosts/${copyHost}/drain`);
    assert.equal(drainCopy.status, 202, JSON.stringify(drainCopy.body));
    const moved = await until(async () => {
      const x = await volumeOf(c, vmId);
      return x?.replica?.state === 'synced' && x.replica.hostId !== fresh.replica.hostId ? x : undefined;
    }, { what: 'the copy built again off the host in maintenance', timeoutMs: 15_000 });
    assert.equal(hostName(c, moved.replica.hostId), home);
    const events = (await c.api('GET', `/api/v1/events?object=${fresh.id}`)).body.items.map((e: { message: string }) => e.message);
    assert.ok(events.some((m: string) => /in maintenance/.test(m)), events.join('\n'));
  });
});

describe('a stopped VM on replicated storage whose host fails', () => {
  const t = clusterFor();

  it('starts from the copy of its disk on another host', async () => {
    const { c, link, first } = t;
    const vm = await createOnFirst(c, 'sleeper');
    const second = await c.addHost('host-2');
    await syncedCopy(c, vm.id, 'a synced copy');
    const stop = await c.api('POST', '/api/v1/vms/sleeper/stop');
    assert.equal((await c.waitTask(stop.body.task.id)).state, 'succeeded');
    link.cut();
    await until(async () => (await c.api('GET', '/api/v1/hosts/host-1')).body.state === 'failed', { what: 'host-1 failed', timeoutMs: 15_000 });
    assert.equal((await vmOf(c, 'sleeper')).hostId, first.agent.hostId, 'a stopped VM stays with its disk');
    const start = await c.api('POST', '/api/v1/vms/sleeper/start');
    assert.equal(start.status, 202, JSON.stringify(start.body));
    assert.equal((await c.waitTask(start.body.task.id)).state, 'succeeded');
    const running = await vmOf(c, 'sleeper');
    assert.equal(running.hostId, second.agent.hostId, 'it runs on the copy\'s host');
    const v = await volumeOf(c, vm.id);
    assert.equal(v.poolId, (await c.api('GET', '/api/v1/pools/host-2-local')).body.id, 'the copy became its disk');
    const events = (await c.api('GET', `/api/v1/events?object=${v.id}`)).body.items.map((e: { type: string }) => e.type);
    assert.ok(events.includes('volume.replica.promoted'), events.join(', '));
  });
});
