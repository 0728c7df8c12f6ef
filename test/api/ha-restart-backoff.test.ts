// HA restart backoff: an HA VM whose hosts fail one after the other is restarted at once the first time,
// and the next time only once its backoff has passed, which its message announces. Simulated hosts behind
// real loopback TCP links the test cuts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { delayAfter } from '../../src/control/ha/restart-backoff.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { eventsOf, hostOf, runningOn, vmOf } from '../support/ha.ts';
import { type Link, createLink } from '../support/link.ts';
import { until } from '../until.ts';

const BACKOFF_MS = 4000;

describe('an HA VM whose hosts fail one after the other', () => {
  let c: Cluster;
  const links: Record<string, Link> = {};
  let vmId: string;
  before(async () => {
    c = await startCluster({
      control: { hostLeaseMs: 1000, failoverMarginMs: 300, haHostFailures: 0, hostFlapFailures: 0, haRestartBackoffMs: BACKOFF_MS, haRestartBackoffMaxMs: 2 * BACKOFF_MS },
    });
    for (const name of ['host-1', 'host-2', 'host-3']) links[name] = await createLink(c.url);
    await c.addHost('host-1', undefined, links['host-1'].url);
    const r = await c.api('POST', '/api/v1/vms', { name: 'svc', cpus: 1, memoryMiB: 256, ha: true });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    vmId = r.body.vm.id;
    await c.addHost('host-2', undefined, links['host-2'].url);
    await c.addHost('host-3', undefined, links['host-3'].url);
  });
  after(async () => {
    await c?.close();
    for (const l of Object.values(links)) await l.close();
  });

  const runningOff = (...names: string[]) =>
    until(async () => {
      const v = await vmOf(c, 'svc');
      const on = c.hosts.find((h) => h.agent.hostId === v.hostId)?.name;
      return v.phase === 'running' && on && !names.includes(on) ? { vm: v, on } : undefined;
    }, { what: `svc running off ${names.join(', ')}`, timeoutMs: 20_000 });

  it('is restarted at once the first time, and the next time once its backoff has passed, as its message says', async () => {
    links['host-1'].cut();
    const { on: second } = await runningOff('host-1');
    const [first] = await eventsOf(c, 'vm.ha.restarting', vmId);
    assert.ok(first, 'one restart');

    links[second].cut();
    const waiting = await until(async () => {
      const v = await vmOf(c, 'svc');
      return /restarts it next at (\S+)$/.exec(v.message ?? '') ? v : undefined;
    }, { what: 'svc waiting out its backoff', timeoutMs: 15_000 });
    assert.match(waiting.message, new RegExp(`^host ${second} failed; HA restarted the VM 1 time lately and restarts it next at `));
    const nextAt = Date.parse(/restarts it next at (\S+)$/.exec(waiting.message)![1]);
    const firstAt = Date.parse(first.at);
    assert.ok(nextAt <= firstAt + BACKOFF_MS && nextAt > firstAt + BACKOFF_MS - 1000, `next at ${nextAt - firstAt} ms after the first restart, not ${BACKOFF_MS}`);
    assert.equal((await hostOf(c, second)).state, 'failed');

    const { on: third } = await runningOff('host-1', second);
    const restarts = await eventsOf(c, 'vm.ha.restarting', vmId);
    assert.equal(restarts.length, 2, JSON.stringify(restarts));
    assert.ok(Date.parse(restarts[1].at) >= nextAt, `the second restart (${restarts[1].at}) waited until ${new Date(nextAt).toISOString()}`);
    assert.deepEqual(await runningOn(c, vmId), [third]);
  });
});

describe('the HA restart backoff', () => {
  it('waits nothing before the first restart, then doubles from its base up to its cap', () => {
    const b = { baseMs: 10_000, maxMs: 60_000 };
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => delayAfter(n, b)), [0, 10_000, 20_000, 40_000, 60_000, 60_000]);
    assert.equal(delayAfter(3, { baseMs: 0, maxMs: 0 }), 0);
  });
});
