// Every phase change awan makes is in the VM phase table, and a failed VM goes on like any other: it can be
// stopped, started again and deleted.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { IllegalPhaseChange, type VmPhase, canTransition, vmPhases } from '../../src/control/features/vms/model.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

const all = [...vmPhases];
const but = (...except: VmPhase[]) => all.filter((p) => !except.includes(p));

/**
 * The phase writes of src/control/reconcile (vm-controller.ts, vm-migration.ts), each with the phases the
 * VM can be in when the code path runs. Adding a path there means adding its row here.
 */
const changes: { where: string; from: VmPhase[]; to: VmPhase }[] = [
  { where: 'host not connected and not ready: nothing is known', from: but('unknown', 'stopped', 'failed', 'deleting'), to: 'unknown' },
  { where: 'a crash reported while it should run', from: but('pending', 'deleting'), to: 'failed' },
  { where: 'desired stopped, the host still runs it (a user stop)', from: but('deleting', 'migrating'), to: 'stopping' },
  { where: 'desired stopped, nothing runs: stopped', from: but('deleting', 'migrating'), to: 'stopped' },
  { where: 'the host reports it running', from: but('deleting'), to: 'running' },
  { where: 'no host has room', from: but('deleting', 'migrating'), to: 'failed' },
  { where: 'placed on a host', from: but('deleting', 'migrating', 'running'), to: 'starting' },
  { where: 'started on its kept host', from: but('deleting', 'migrating'), to: 'starting' },
  { where: 'the host refused the start', from: ['starting'], to: 'failed' },
  { where: 'a delete was asked', from: all, to: 'deleting' },
  { where: 'a delete whose host is gone', from: ['deleting'], to: 'unknown' },
  { where: 'a migration begins', from: ['running'], to: 'migrating' },
  { where: 'a migration failed before the handover', from: ['migrating'], to: 'running' },
  { where: 'the destination did not confirm', from: ['migrating'], to: 'unknown' },
  { where: 'an interrupted migration is settled', from: ['running', 'migrating', 'unknown'], to: 'running' },
];

describe('VM phase changes', () => {
  it('has every phase change the reconciler makes in the table', () => {
    const missing = changes.flatMap((c) => c.from.filter((f) => !canTransition(f, c.to)).map((f) => `${f} -> ${c.to} (${c.where})`));
    assert.deepEqual(missing, []);
  });

  it('still refuses the changes awan never makes', () => {
    for (const [from, to] of [['deleting', 'running'], ['migrating', 'pending'], ['migrating', 'stopping'], ['stopped', 'migrating'], ['failed', 'unknown']] as const) {
      assert.equal(canTransition(from, to), false, `${from} -> ${to}`);
    }
    assert.match(new IllegalPhaseChange('v1', 'deleting', 'running').message, /illegal phase change of VM v1: deleting -> running/);
  });
});

describe('a failed VM', () => {
  let c: Cluster;
  before(async () => {
    // A slow heartbeat: a loaded machine must not make the host look gone in the middle of the test.
    c = await startCluster({ hosts: 1, control: { heartbeatIntervalMs: 1000 } });
  });
  after(async () => { await c?.close(); });

  it('can be stopped, started again and deleted', async () => {
    c.hosts[0].driver.failNextStart('no bootable disk');
    const created = await c.api('POST', '/api/v1/vms', { name: 'phoenix', cpus: 1, memoryMiB: 128 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'failed');
    assert.equal((await c.api('GET', '/api/v1/vms/phoenix')).body.phase, 'failed');

    const stop = await c.api('POST', '/api/v1/vms/phoenix/stop', {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    const stopped = await c.waitTask(stop.body.task.id);
    assert.equal(stopped.state, 'succeeded', JSON.stringify(stopped));
    assert.equal((await c.api('GET', '/api/v1/vms/phoenix')).body.phase, 'stopped');

    const start = await c.api('POST', '/api/v1/vms/phoenix/start', {});
    assert.equal(start.status, 202, JSON.stringify(start.body));
    assert.equal((await c.waitTask(start.body.task.id)).state, 'succeeded');
    const vm = (await c.api('GET', '/api/v1/vms/phoenix')).body;
    assert.equal(vm.phase, 'running');
    assert.equal((await c.hosts[0].driver.status(vm.id)).state, 'running');

    const del = await c.api('DELETE', '/api/v1/vms/phoenix');
    assert.equal((await c.waitTask(del.body.task.id)).state, 'succeeded');
    await until(async () => (await c.api('GET', '/api/v1/vms/phoenix')).status === 404, { what: 'the VM gone' });
    assert.ok(!(await c.hosts[0].driver.list()).some((v) => v.id === vm.id));
  });
});
