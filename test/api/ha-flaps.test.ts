// Hosts whose link to control keeps failing, with simulated hosts behind real loopback TCP links the test
// cuts: a host failed too often is quarantined when it comes back (no new VMs, no HA VMs) until an admin
// activates it or it stays up long enough; an HA VM its host fenced is never started there again while it
// is quarantined, and one whose host came back ready before the failover margin runs exactly once.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type ControlConfig, createControl } from '../../src/control/app.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { cliRunner } from '../support/cli.ts';
import { type Cluster, type TestHost, startCluster } from '../support/cluster.ts';
import { eventsOf, hostOf, runningOn, vmOf, watchCopies } from '../support/ha.ts';
import { type Link, createLink } from '../support/link.ts';
import { until } from '../until.ts';

/** Cuts the host's link until control declares it failed, then restores it at once; returns the failed host. */
async function failOnce(c: Cluster, link: Link, name: string) {
  link.cut();
  const failed = await until(async () => {
    const h = await hostOf(c, name);
    return h.state === 'failed' ? h : undefined;
  }, { what: `${name} failed`, timeoutMs: 15_000 });
  link.restore();
  return failed;
}

const hostState = (c: Cluster, name: string, state: string) =>
  until(async () => {
    const h = await hostOf(c, name);
    return h.state === state ? h : undefined;
  }, { what: `${name} ${state}`, timeoutMs: 15_000 });

/** Starts a cluster whose first host (reached through a link) runs one HA VM, then adds host-2. */
async function clusterWithHaVm(control: Partial<ControlConfig>) {
  const c = await startCluster({ control: { hostLeaseMs: 1000, failoverMarginMs: 500, haHostFailures: 0, ...control } });
  const link = await createLink(c.url);
  const first = await c.addHost('host-1', undefined, link.url);
  const r = await c.api('POST', '/api/v1/vms', { name: 'svc', cpus: 1, memoryMiB: 256, ha: true });
  const made = await c.waitTask(r.body.task.id);
  assert.equal(made.state, 'succeeded', JSON.stringify(made));
  const second = await c.addHost('host-2');
  return { c, link, first, second, vmId: r.body.vm.id as string };
}

/** The states a host's driver reported for one VM, in order. */
function statesSeen(host: TestHost, vmId: string): string[] {
  const seen: string[] = [];
  host.driver.subscribe((e) => {
    if (e.type === 'vm-state' && e.vm.id === vmId) seen.push(e.vm.state);
  });
  return seen;
}

describe('a host that fails twice within the flap window', () => {
  let c: Cluster;
  let link: Link;
  let first: TestHost;
  let second: TestHost;
  before(async () => {
    ({ c, link, first, second } = await clusterWithHaVm({ hostFlapFailures: 2, hostFlapWindowMs: 600_000, hostQuarantineQuietMs: 0, haRestartBackoffMs: 0 }));
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('comes back ready after its first failure, which it remembers', async () => {
    await failOnce(c, link, 'host-1');
    const back = await hostState(c, 'host-1', 'ready');
    assert.equal(back.recentFailures.length, 1, JSON.stringify(back));
    assert.equal(back.quarantinedAt, null);
  });

  it('is quarantined when it comes back from the second, with why and since when', async () => {
    await failOnce(c, link, 'host-1');
    const h = await hostState(c, 'host-1', 'quarantined');
    assert.equal(h.connected, true, 'it is back, yet not ready');
    assert.equal(h.recentFailures.length, 2);
    assert.ok(h.quarantinedAt, JSON.stringify(h));
    assert.match(h.stateReason, /^flapping: declared failed 2 times within 10 minutes/);
    assert.ok(h.stateReason.includes(`quarantined since ${h.quarantinedAt}`), h.stateReason);
    const events = await eventsOf(c, 'host.quarantined', first.agent.hostId);
    assert.equal(events.length, 1, JSON.stringify(events));
    assert.match(events[0].message, /host host-1 is quarantined: flapping/);
    const listed = (await c.api('GET', '/api/v1/hosts?state=quarantined')).body.items.map((x: { name: string }) => x.name);
    assert.deepEqual(listed, ['host-1']);
  });

  it('runs no HA VM and takes no new VM, though it is the emptier host', async () => {
    const svc = await until(async () => {
      const v = await vmOf(c, 'svc');
      return v.phase === 'running' && v.hostId === second.agent.hostId ? v : undefined;
    }, { what: 'svc running on host-2', timeoutMs: 15_000 });
    assert.deepEqual(await runningOn(c, svc.id), ['host-2']);
    const r = await c.api('POST', '/api/v1/vms', { name: 'fresh', cpus: 1, memoryMiB: 256 });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    assert.equal((await vmOf(c, 'fresh')).hostId, second.agent.hostId, 'spread would pick the empty host-1 if it could');
    const moved = await c.api('POST', '/api/v1/vms/fresh/migrate', { host: 'host-1' });
    assert.equal(moved.status, 409, JSON.stringify(moved.body));
    assert.equal(moved.body.error.code, 'HOST_NOT_READY');
    assert.match(moved.body.error.message, /host-1 is quarantined/);
  });

  it('is taken back by an admin with activate, and then takes VMs again; what moved away stays', async () => {
    const r = await c.api('POST', '/api/v1/hosts/host-1/activate');
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const h = await hostState(c, 'host-1', 'ready');
    assert.match(h.stateReason, /an admin lifted the quarantine/);
    assert.equal(h.quarantinedAt, null);
    assert.deepEqual(h.recentFailures, []);
    const made = await c.api('POST', '/api/v1/vms', { name: 'after', cpus: 1, memoryMiB: 256 });
    assert.equal((await c.waitTask(made.body.task.id)).state, 'succeeded');
    assert.equal((await vmOf(c, 'after')).hostId, first.agent.hostId);
    const svc = await vmOf(c, 'svc');
    assert.equal(svc.hostId, second.agent.hostId);
    assert.deepEqual(await runningOn(c, svc.id), ['host-2']);
  });
});

describe('a host quarantined on its return before the failover margin ran out', () => {
  let c: Cluster;
  let link: Link;
  let first: TestHost;
  let second: TestHost;
  let vmId: string;
  let seen: string[];
  before(async () => {
    // Every failure quarantines; the margin is long, so the host is back before HA would act on the lease.
    ({ c, link, first, second, vmId } = await clusterWithHaVm({ failoverMarginMs: 4000, hostFlapFailures: 1, hostQuarantineQuietMs: 2000 }));
    seen = statesSeen(first, vmId);
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('has its fenced HA VM restarted on another host and never again on itself', async () => {
    const copies = watchCopies(c, vmId);
    await failOnce(c, link, 'host-1');
    await hostState(c, 'host-1', 'quarantined');
    const svc = await until(async () => {
      const v = await vmOf(c, 'svc');
      return v.phase === 'running' && v.hostId === second.agent.hostId ? v : undefined;
    }, { what: 'svc running on host-2', timeoutMs: 15_000 });
    assert.equal(await copies.stop(), 1, 'never two copies at once');
    assert.deepEqual(await runningOn(c, svc.id), ['host-2']);
    const fencedAt = seen.indexOf('stopped');
    assert.ok(fencedAt >= 0, `host-1 stopped the VM itself: ${seen.join(', ')}`);
    assert.deepEqual(seen.slice(fencedAt + 1).filter((s) => s === 'starting' || s === 'running'), [], `host-1 never started it again: ${seen.join(', ')}`);
    const restarts = await eventsOf(c, 'vm.ha.restarting', vmId);
    assert.equal(restarts.length, 1, JSON.stringify(restarts));
    assert.match(restarts[0].message, /restarts on host-2: host host-1 is quarantined/);
  });

  it('lifts its quarantine itself after a quiet period, and the VM stays where it went', async () => {
    const h = await hostState(c, 'host-1', 'ready');
    assert.match(h.stateReason, /quarantine lifted: no failure for 2 s/);
    assert.equal((await vmOf(c, 'svc')).hostId, second.agent.hostId);
    assert.deepEqual(await runningOn(c, vmId), ['host-2']);
  });
});

describe('a host back ready just after its lease ran out', () => {
  let c: Cluster;
  let link: Link;
  let first: TestHost;
  let vmId: string;
  let seen: string[];
  const marginMs = 3000;
  before(async () => {
    ({ c, link, first, vmId } = await clusterWithHaVm({ failoverMarginMs: marginMs }));
    seen = statesSeen(first, vmId);
  });
  after(async () => {
    await c?.close();
    await link?.close();
  });

  it('has the HA VM it fenced running again exactly once, also after the margin passed', async () => {
    const copies = watchCopies(c, vmId);
    const failed = await failOnce(c, link, 'host-1');
    const back = await hostState(c, 'host-1', 'ready');
    assert.equal(back.recentFailures.length, 1);
    await until(async () => (await vmOf(c, 'svc')).phase === 'running', { what: 'svc running again', timeoutMs: 15_000 });
    // HA's own moment (lease expiry plus margin) passes, and a resync after it, without a second copy.
    const releaseAt = Date.parse(failed.leaseExpiresAt) + marginMs;
    await until(() => Date.now() > releaseAt + 2000, { what: 'the failover margin and a resync to pass', timeoutMs: marginMs + 10_000, intervalMs: 100 });
    assert.equal(await copies.stop(), 1, 'never two copies at once');
    const svc = await vmOf(c, 'svc');
    assert.equal(svc.phase, 'running');
    const on = await runningOn(c, vmId);
    assert.equal(on.length, 1, `runs exactly once: ${on.join(', ')}`);
    assert.equal(c.hosts.find((h) => h.name === on[0])!.agent.hostId, svc.hostId);
    assert.ok(seen.includes('stopped'), `host-1 fenced the VM: ${seen.join(', ')}`);
  });
});

describe('flap and restart backoff settings', () => {
  const base = { db: 'sqlite::memory:', adminPassword: 'admin-password', log: createLogger('test', 'silent') };

  it('are checked when control is made', async () => {
    await assert.rejects(createControl({ ...base, hostFlapFailures: 2, hostFlapWindowMs: 0 }), /flap window must be longer than 0 ms/);
    await assert.rejects(createControl({ ...base, hostQuarantineQuietMs: -1 }), /quietMs must be a whole number ≥ 0, not -1/);
    await assert.rejects(createControl({ ...base, haRestartBackoffMs: 20_000, haRestartBackoffMaxMs: 10_000 }), /cap \(10000 ms\) is below its first delay \(20000 ms\)/);
  });

  it('are flags of awan serve, refused when they make no sense', async () => {
    const cli = cliRunner(() => ({}));
    try {
      const bad = await cli.awan(['serve', '--db', 'sqlite::memory:', '--port', '0', '--ha-restart-backoff-ms', '20000', '--ha-restart-backoff-max-ms', '1000']);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /HA restart backoff cap \(1000 ms\) is below its first delay \(20000 ms\)/);
      const notNumber = await cli.awan(['serve', '--db', 'sqlite::memory:', '--port', '0', '--host-flap-failures', 'often']);
      assert.notEqual(notNumber.code, 0);
      assert.match(notNumber.stderr, /often is not a number/);
      assert.match((await cli.awan(['serve', '--help'])).stdout, /--host-flap-failures <n>[\s\S]*--host-flap-window-ms[\s\S]*--host-quarantine-quiet-ms[\s\S]*--ha-restart-backoff-ms[\s\S]*--ha-restart-backoff-max-ms/);
    } finally {
      cli.close();
    }
  });
});
