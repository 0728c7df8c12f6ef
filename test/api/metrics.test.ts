// /metrics is what Prometheus accepts: a scrape of a control with hosts, VMs and some traffic passes
// `promtool check metrics` without a single complaint, lint included.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

describe('/metrics', () => {
  let c: Cluster;
  before(async () => {
    requireCommand('promtool', 'apt-get install prometheus');
    // Beats of 1 s: on a loaded machine 200 ms beats make hosts look unreachable under the VMs made here.
    c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: 1000 } });
  });
  after(async () => { await c?.close(); });

  it('passes promtool check metrics with hosts, VMs, migrations and requests behind it', async () => {
    for (const name of ['web-1', 'web-2']) await c.waitTask((await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 256 })).body.task.id);
    await c.api('POST', '/api/v1/vms', { name: 'idle', cpus: 1, memoryMiB: 256, start: false });
    // Histograms by migration mode and requests by status (404 and 400 too) get their labelled series.
    // On a busy machine a host can miss heartbeats and a start fail; start again until the VM runs.
    await until(async () => {
      const vm = (await c.api('GET', '/api/v1/vms/web-1')).body;
      if (vm.phase === 'failed' || vm.phase === 'stopped') await c.api('POST', '/api/v1/vms/web-1/start');
      return vm.phase === 'running';
    }, { timeoutMs: 30_000, intervalMs: 100, what: 'web-1 running' });
    const migration = await c.api('POST', '/api/v1/vms/web-1/migrate');
    assert.equal(migration.status, 202, JSON.stringify(migration.body));
    await c.waitTask(migration.body.task.id);
    await c.api('GET', '/api/v1/nothing-here');
    await c.api('GET', '/api/v1/hosts?state=bogus');

    const res = await fetch(`${c.url}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    for (const series of ['awan_hosts{state="', 'awan_vms{phase="', 'awan_http_request_duration_seconds_bucket{', 'awan_nodejs_active_handles{']) {
      assert.ok(text.includes(series), `the scrape has ${series}`);
    }

    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    const complaints = `${check.stdout}${check.stderr}`.trim();
    assert.equal(complaints, '', `promtool check metrics complained:\n${complaints}`);
    assert.equal(check.status, 0);
  });
});
