// High availability with simulated hosts: a host cut off from control loses its lease, stops its HA VMs by
// itself, and only then are they restarted on another host; non-HA VMs are failed with the reason; the
// host comes back without running a second copy. The links are real loopback TCP that the test cuts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshPostgres } from '../support/postgres.ts';
import { type Cluster, type TestHost, startCluster } from '../support/cluster.ts';
import { type Link, createLink } from '../support/link.ts';
import { until } from '../until.ts';

const vmOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body;
const hostOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/hosts/${name}`)).body;
const upStates = ['starting', 'running', 'paused'];

/** Every host's driver that holds a live copy of the VM. */
async function runningOn(c: Cluster, vmId: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of c.hosts) if ((await h.driver.list()).some((v) => v.id === vmId && upStates.includes(v.state))) out.push(h.name);
  return out;
}

describe('a host cut off from control', () => {
  let c: Cluster;
  let link: Link;
  let lonely: TestHost;
  /** When each host's driver saw the HA VM stop and start, to prove the order. */
  const seen: { host: string; state: string; at: number }[] = [];
  const ids: Record<string, string> = {};

  before(async () => {
    c = await startCluster({ control: { hostLeaseMs: 1000, failoverMarginMs: 500, haHostFailures: 0 } });
    link = await createLink(c.url);
    lonely = await c.addHost('host-1', undefined, link.url);
    for (const name of ['web', 'db', 'batch']) {
      const r = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 256, ha: name !== 'batch', haPriority: name === 'db' ? 10 : 0 });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
      ids[name] = r.body.vm.id;
    }
    await c.addHost('host-2');
    await c.addHost('host-3');
    for (const h of c.hosts) {
      h.driver.subscribe((e) => {
        if (e.type === 'vm-state' && e.vm.id === ids.web) seen.push({ host: h.name, state: e.vm.state, at: Date.now() });
      });
    }
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('is failed once its lease runs out, with why and since when', async () => {
    const before = await vmOf(c, 'web');
    assert.equal(before.hostId, lonely.agent.hostId);
    link.cut();
    const failed = await until(async () => {
      const h = await hostOf(c, 'host-1');
      return h.state === 'failed' ? h : undefined;
    }, { what: 'host-1 failed', timeoutMs: 15_000 });
    assert.ok(failed.failedAt, JSON.stringify(failed));
    assert.match(failed.stateReason, /lease ran out/);
  });

  it('stops its HA VMs by itself before control restarts them elsewhere, highest priority first', async () => {
    for (const name of ['web', 'db']) {
      const vm = await until(async () => {
        const v = await vmOf(c, name);
        return v.phase === 'running' && v.hostId !== lonely.agent.hostId ? v : undefined;
      }, { what: `${name} running elsewhere`, timeoutMs: 15_000 });
      assert.ok(vm.placementToken >= 2, `a new placement token: ${vm.placementToken}`);
      assert.deepEqual(await runningOn(c, vm.id), [c.hosts.find((h) => h.agent.hostId === vm.hostId)!.name], `${name} runs exactly once`);
    }
    const stoppedOnLonely = seen.find((s) => s.host === 'host-1' && s.state === 'stopped');
    const startedElsewhere = seen.find((s) => s.host !== 'host-1' && s.state === 'running');
    assert.ok(stoppedOnLonely && startedElsewhere, JSON.stringify(seen));
    assert.ok(stoppedOnLonely.at <= startedElsewhere.at, `stopped on host-1 at ${stoppedOnLonely.at}, started elsewhere at ${startedElsewhere.at}`);

    const restarts = (await c.api('GET', '/api/v1/events?type=vm.ha.restarting&limit=10')).body.items;
    assert.deepEqual(restarts.map((e: { objectId: string }) => e.objectId), [ids.db, ids.web], 'db (priority 10) restarts before web');
    const metrics = await until(async () => {
      const text = await (await fetch(`${c.url}/metrics`)).text();
      return /awan_ha_restart_seconds_count 2/.test(text) ? text : undefined;
    }, { what: 'two restarts measured' });
    assert.match(metrics, /awan_ha_detection_seconds_count 2/);
    assert.match(metrics, /awan_ha_fencing_seconds_count 2/);
  });

  it('fails a non-HA VM with the reason and leaves it where it is', async () => {
    const batch = await until(async () => {
      const v = await vmOf(c, 'batch');
      return v.phase === 'failed' ? v : undefined;
    }, { what: 'batch failed' });
    assert.match(batch.message, /host host-1 failed.*not HA/);
    assert.equal(batch.hostId, lonely.agent.hostId);
  });

  it('comes back without a second copy: HA VMs stay where they restarted, the non-HA VM runs again', async () => {
    link.restore();
    await until(async () => (await hostOf(c, 'host-1')).state === 'ready', { what: 'host-1 back', timeoutMs: 15_000 });
    await until(async () => (await vmOf(c, 'batch')).phase === 'running', { what: 'batch running again' });
    for (const name of ['web', 'db']) {
      const vm = await vmOf(c, name);
      assert.notEqual(vm.hostId, lonely.agent.hostId);
      assert.deepEqual(await runningOn(c, vm.id), [c.hosts.find((h) => h.agent.hostId === vm.hostId)!.name], `${name} runs exactly once`);
    }
    const fenced = (await lonely.driver.list()).find((v) => v.id === ids.web);
    assert.ok(!fenced || fenced.state === 'stopped', JSON.stringify(fenced));
  });
});

describe('a host whose agent dies', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1, control: { hostLeaseMs: 1000, failoverMarginMs: 500, haHostFailures: 0 } });
  });
  after(async () => { await c?.close(); });

  it('has its HA VM restarted elsewhere, and a restarted agent stops its stale copy before it reports', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'svc', cpus: 1, memoryMiB: 256, ha: true });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    const [first] = c.hosts;
    await c.addHost('host-2');
    // The agent is gone and nothing on the simulated host stops the VM (QEMU hosts have a watchdog for that).
    await c.stopAgent(first);
    const moved = await until(async () => {
      const v = await vmOf(c, 'svc');
      return v.phase === 'running' && v.hostId !== first.agent.hostId ? v : undefined;
    }, { what: 'svc running on host-2', timeoutMs: 15_000 });
    assert.equal((await first.driver.status(moved.id)).state, 'running', 'the old copy still runs while its host is cut off');
    await c.startAgent(first);
    await until(async () => !(await runningOn(c, moved.id)).includes('host-1'), { what: 'the stale copy stopped' });
    await until(async () => (await hostOf(c, 'host-1')).state === 'ready', { what: 'host-1 back' });
    assert.deepEqual(await runningOn(c, moved.id), ['host-2']);
    assert.equal((await vmOf(c, 'svc')).hostId, c.hosts[1].agent.hostId);
  });
});

// On PostgreSQL requests really run side by side (a pool of connections): the race is real there.
for (const store of ['sqlite', 'postgres'] as const) describe(`HA admission control under concurrent requests (${store})`, () => {
  let c: Cluster;
  let pg: Awaited<ReturnType<typeof freshPostgres>> | undefined;
  before(async () => {
    pg = store === 'postgres' ? await freshPostgres() : undefined;
    c = await startCluster({ hosts: 2, ...(pg ? { db: pg.url } : {}), control: { haHostFailures: 1 } });
  });
  after(async () => {
    await c?.close();
    await pg?.drop();
  });

  it('admits only as many HA VMs created at once as fit, and starts at once likewise', async () => {
    // 16 GiB is left after losing one host: two VMs of 6 GiB fit, a third does not.
    const created = await Promise.all([1, 2, 3, 4, 5].map((i) => c.api('POST', '/api/v1/vms', { name: `rush-${i}`, cpus: 1, memoryMiB: 6144, ha: true })));
    assert.deepEqual(created.map((r) => r.status).sort(), [202, 202, 409, 409, 409], JSON.stringify(created.map((r) => r.body)));
    for (const r of created) if (r.status === 409) assert.equal(r.body.error.code, 'HA_ADMISSION');
    for (const r of created.filter((x) => x.status === 202)) await c.waitTask(r.body.task.id);
    // Stopped, both reserve nothing; started at once with three more stopped ones, again only two run.
    for (const r of created.filter((x) => x.status === 202)) await c.waitTask((await c.api('POST', `/api/v1/vms/${r.body.vm.id}/stop`)).body.task.id);
    const names = created.filter((x) => x.status === 202).map((r) => r.body.vm.name as string);
    for (const i of [6, 7, 8]) {
      const r = await c.api('POST', '/api/v1/vms', { name: `rush-${i}`, cpus: 1, memoryMiB: 6144, ha: true, start: false });
      assert.equal(r.status, 202);
      names.push(`rush-${i}`);
    }
    const started = await Promise.all(names.map((n) => c.api('POST', `/api/v1/vms/${n}/start`)));
    assert.deepEqual(started.map((r) => r.status).sort(), [202, 202, 409, 409, 409], JSON.stringify(started.map((r) => r.body)));
  });
});

describe('HA admission control', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2, control: { haHostFailures: 1 } });
  });
  after(async () => { await c?.close(); });

  it('refuses an HA VM the cluster could not restart after losing its largest host, with the figures', async () => {
    // Two hosts of 16 GiB: after losing one, 16 GiB is left for every HA VM that is to run.
    const fits = await c.api('POST', '/api/v1/vms', { name: 'big', cpus: 1, memoryMiB: 12288, ha: true });
    assert.equal(fits.status, 202, JSON.stringify(fits.body));
    assert.equal((await c.waitTask(fits.body.task.id)).state, 'succeeded');
    const refused = await c.api('POST', '/api/v1/vms', { name: 'bigger', cpus: 1, memoryMiB: 8192, ha: true });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, 'HA_ADMISSION');
    assert.match(refused.body.error.message, /would not survive losing the largest host: HA VMs would need 20480 MiB, and the other 1 ready hosts hold 16384 MiB/);
    assert.equal((await c.api('GET', '/api/v1/vms/bigger')).status, 404, 'nothing was recorded');
    // The same VM without HA promises nothing and is accepted.
    assert.equal((await c.api('POST', '/api/v1/vms', { name: 'bigger', cpus: 1, memoryMiB: 8192, start: false })).status, 202);
  });

  it('counts a stopped HA VM for nothing and checks it when it is started', async () => {
    // Created stopped, it reserves nothing, so it is accepted beside big.
    const cold = await c.api('POST', '/api/v1/vms', { name: 'cold', cpus: 1, memoryMiB: 8192, ha: true, start: false });
    assert.equal(cold.status, 202, JSON.stringify(cold.body));
    const refused = await c.api('POST', '/api/v1/vms/cold/start');
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, 'HA_ADMISSION');
    assert.match(refused.body.error.message, /HA VM cold would not survive losing the largest host: HA VMs would need 20480 MiB, and the other 1 ready hosts hold 16384 MiB/);
    const still = (await c.api('GET', '/api/v1/vms/cold')).body;
    assert.equal(still.phase, 'stopped');
    assert.deepEqual((await c.api('GET', `/api/v1/tasks?targetId=${still.id}&kind=start`)).body.items, [], 'no start task was made');

    // Once big is stopped it holds nothing back: cold may start, and then big may not.
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/big/stop')).body.task.id)).state, 'succeeded');
    const started = await c.api('POST', '/api/v1/vms/cold/start');
    assert.equal(started.status, 202, JSON.stringify(started.body));
    assert.equal((await c.waitTask(started.body.task.id)).state, 'succeeded');
    const bigRefused = await c.api('POST', '/api/v1/vms/big/start');
    assert.equal(bigRefused.status, 409, JSON.stringify(bigRefused.body));
    assert.equal(bigRefused.body.error.code, 'HA_ADMISSION');
    assert.equal((await c.api('GET', '/api/v1/vms/big')).body.phase, 'stopped');

    // A third host makes room for both.
    await c.addHost('host-3');
    const ok = await c.api('POST', '/api/v1/vms/big/start');
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    assert.equal((await c.waitTask(ok.body.task.id)).state, 'succeeded');
    const tooMuch = await c.api('POST', '/api/v1/vms', { name: 'also-ha', cpus: 1, memoryMiB: 16384, ha: true });
    assert.equal(tooMuch.status, 409, JSON.stringify(tooMuch.body));
    assert.match(tooMuch.body.error.message, /HA VMs would need 36864 MiB, and the other 2 ready hosts hold 32768 MiB/);
  });
});
