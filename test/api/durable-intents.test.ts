// What a user asks for that takes effect over time is kept in the VM's spec, so it happens even when the
// world gets in the way: a memory target outlives a migration, a restart of the VM and of control; a
// reboot asked while the host is away happens once it is back; a stop takes effect while the VM boots.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

const vmOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body;
const hostState = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/hosts/${name}`)).body.state;

describe('a memory target', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-intents-'));
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2, db: `sqlite:${join(dir, 'awan.db')}`, control: { heartbeatIntervalMs: 500 } });
  });
  after(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('survives a restart of control, a migration and a restart of the VM', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'lean', cpus: 1, memoryMiB: 1024 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const set = await c.api('POST', '/api/v1/vms/lean/memory', { targetMiB: 512 });
    assert.equal(set.status, 202, JSON.stringify(set.body));
    assert.equal((await c.waitTask(set.body.task.id)).state, 'succeeded');
    assert.equal((await vmOf(c, 'lean')).memoryActualMiB, 512);

    await c.restartControl();
    await until(async () => (await hostState(c, 'host-1')) === 'ready' && (await hostState(c, 'host-2')) === 'ready', { what: 'hosts back' });

    const from = (await vmOf(c, 'lean')).hostId;
    const moved = await c.api('POST', '/api/v1/vms/lean/migrate', {});
    assert.equal(moved.status, 202, JSON.stringify(moved.body));
    assert.equal((await c.waitTask(moved.body.task.id)).state, 'succeeded');
    // The destination boots the guest with its boot memory; the target is applied there again.
    const onDst = await until(async () => {
      const vm = await vmOf(c, 'lean');
      return vm.hostId !== from && vm.memoryActualMiB === 512 ? vm : undefined;
    }, { what: 'the target applied on the destination' });
    const dst = c.hosts.find((h) => h.agent.hostId === onDst.hostId)!;
    assert.equal((await dst.driver.status(onDst.id)).memoryActualMiB, 512, 'the host holds the guest at its target');

    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/lean/stop', {})).body.task.id)).state, 'succeeded');
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/lean/start', {})).body.task.id)).state, 'succeeded');
    const restarted = await until(async () => {
      const vm = await vmOf(c, 'lean');
      return vm.phase === 'running' && vm.memoryActualMiB === 512 ? vm : undefined;
    }, { what: 'the target applied after a restart of the VM' });
    const host = c.hosts.find((h) => h.agent.hostId === restarted.hostId)!;
    assert.equal((await host.driver.status(restarted.id)).memoryActualMiB, 512);
  });
});

describe('a reboot asked while the host is away', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1, control: { heartbeatIntervalMs: 500 } });
  });
  after(async () => { await c?.close(); });

  it('happens once the host is back', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'patient', cpus: 1, memoryMiB: 128 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const id = created.body.vm.id;
    const [host] = c.hosts;
    await c.stopAgent(host);
    await until(async () => (await hostState(c, host.name)) === 'unreachable', { what: 'host away' });

    const reboot = await c.api('POST', '/api/v1/vms/patient/reboot', {});
    assert.equal(reboot.status, 202, JSON.stringify(reboot.body));
    assert.equal((await c.api('GET', `/api/v1/tasks/${reboot.body.task.id}`)).body.state, 'running', 'it waits for the host');
    assert.doesNotMatch(await host.driver.consoleHistory(id), /Restarting system/);

    await c.startAgent(host);
    const done = await c.waitTask(reboot.body.task.id);
    assert.equal(done.state, 'succeeded', JSON.stringify(done));
    assert.match(await host.driver.consoleHistory(id), /Restarting system/, 'the guest rebooted');
    assert.equal((await vmOf(c, 'patient')).phase, 'running');
  });

  it('is refused with a reason when the VM stopped meanwhile', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'gone-quiet', cpus: 1, memoryMiB: 128 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const [host] = c.hosts;
    await c.stopAgent(host);
    await until(async () => (await hostState(c, host.name)) === 'unreachable', { what: 'host away' });
    const reboot = await c.api('POST', '/api/v1/vms/gone-quiet/reboot', {});
    assert.equal(reboot.status, 202);
    await host.driver.stop(created.body.vm.id, { force: true });
    await c.startAgent(host);
    const done = await c.waitTask(reboot.body.task.id);
    assert.equal(done.state, 'failed');
    assert.equal(done.error.code, 'VM_NOT_RUNNING');
  });
});

describe('a stop while the VM boots', () => {
  let c: Cluster;
  before(async () => {
    // A boot that takes ten minutes: the stop must not wait for it.
    c = await startCluster({ hosts: 1, sim: { bootDelayMs: 600_000 } });
  });
  after(async () => { await c?.close(); });

  it('takes effect at once: the boot is abandoned and the VM is stopped', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'sleepy', cpus: 1, memoryMiB: 128 });
    await until(async () => (await vmOf(c, 'sleepy')).phase === 'starting', { what: 'booting' });
    const stop = await c.api('POST', '/api/v1/vms/sleepy/stop', {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    const done = await c.waitTask(stop.body.task.id, 20_000);
    assert.equal(done.state, 'succeeded', JSON.stringify(done));
    const vm = await vmOf(c, 'sleepy');
    assert.equal(vm.phase, 'stopped');
    const create = (await c.api('GET', `/api/v1/tasks/${created.body.task.id}`)).body;
    assert.equal(create.state, 'cancelled');
    assert.match(create.message, /superseded by a stop/);
    const onHost = (await c.hosts[0].driver.list()).find((v) => v.id === vm.id);
    assert.ok(!onHost || !['starting', 'running'].includes(onHost.state), JSON.stringify(onHost));
  });
});

describe('a request racing a controller', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2 });
  });
  after(async () => { await c?.close(); });

  it('is decided again on the row as it is now, never on the one it read', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'mover', cpus: 1, memoryMiB: 128 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const vm = await vmOf(c, 'mover');
    const other = c.hosts.find((h) => h.agent.hostId !== vm.hostId)!;
    // Between the API's read and its write, a controller records the VM on the other host (as the end of
    // a migration would). A migration to that host decided on the old row would move it nowhere.
    const store = c.control.vmStore;
    const find = store.find;
    let raced = false;
    store.find = async (idOrName) => {
      const row = await find(idOrName);
      if (row && !raced) {
        raced = true;
        await store.writeStatus(row, { host_id: other.agent.hostId! });
      }
      return row;
    };
    try {
      const r = await c.api('POST', '/api/v1/vms/mover/migrate', { host: other.name });
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'INVALID_STATE');
      assert.match(r.body.error.message, new RegExp(`already runs on ${other.name}`));
    } finally {
      store.find = find;
    }
    assert.ok(raced);
    const tasks = (await c.api('GET', `/api/v1/tasks?targetId=${vm.id}&kind=migrate`)).body.items;
    assert.deepEqual(tasks, [], 'no migration was recorded');
  });

  it('makes a controller that read the VM before a stop decide again', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'late', cpus: 1, memoryMiB: 128, start: false });
    const id = created.body.vm.id;
    const store = c.control.vmStore;
    const writeStatus = store.writeStatus;
    let stopped = false;
    // The controller's first status write for this VM (its decision to boot it) comes after a user's stop.
    store.writeStatus = async (row, patch, trx) => {
      if (row.id === id && !stopped) {
        stopped = true;
        await c.control.vms.stop(id, false, null);
      }
      return writeStatus(row, patch, trx);
    };
    try {
      const start = await c.api('POST', '/api/v1/vms/late/start', {});
      assert.equal(start.status, 202);
      const startTask = await c.waitTask(start.body.task.id);
      assert.equal(startTask.state, 'cancelled', JSON.stringify(startTask));
      await until(async () => (await vmOf(c, 'late')).phase === 'stopped' && (await c.api('GET', `/api/v1/tasks?targetId=${id}&kind=stop`)).body.items[0]?.state === 'succeeded', { what: 'stopped' });
    } finally {
      store.writeStatus = writeStatus;
    }
    assert.ok(stopped);
    for (const h of c.hosts) assert.ok(!(await h.driver.list()).some((v) => v.id === id), `${h.name} never got the VM`);
  });
});

describe('a migration when control changes hands during the copy', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-intents-'));
  let c: Cluster;
  before(async () => {
    // 1 GiB at 100 MiB/s: the copy lasts about ten seconds, longer than a restart of control.
    c = await startCluster({ hosts: 2, db: `sqlite:${join(dir, 'awan.db')}`, sim: { migrateMiBPerS: 100 }, control: { heartbeatIntervalMs: 500 } });
  });
  after(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts a migration of a new VM and restarts control while the source is still sending it. */
  const restartDuringCopy = async (name: string) => {
    const created = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 1024 });
    assert.equal((await c.waitTask(created.body.task.id)).state, 'succeeded');
    const vm = await vmOf(c, name);
    const src = c.hosts.find((h) => h.agent.hostId === vm.hostId)!;
    const dst = c.hosts.find((h) => h !== src)!;
    const moved = await c.api('POST', `/api/v1/vms/${name}/migrate`, {});
    assert.equal(moved.status, 202, JSON.stringify(moved.body));
    await until(async () => (await c.api('GET', `/api/v1/tasks/${moved.body.task.id}`)).body.progress >= 15, { what: 'the copy under way' });
    await c.restartControl();
    assert.ok((await src.driver.list()).some((v) => v.id === vm.id && v.state === 'running'), 'the source still sends the VM after the restart');
    return { vm, src, dst, taskId: moved.body.task.id as string };
  };

  it('carries on under the new control and ends on the destination', async () => {
    const { vm, src, dst, taskId } = await restartDuringCopy('traveller');
    const done = await c.waitTask(taskId, 60_000);
    assert.equal(done.state, 'succeeded', JSON.stringify(done));
    assert.match(done.message, new RegExp(`migrated to ${dst.name}`));
    const after = await vmOf(c, 'traveller');
    assert.equal(after.hostId, dst.agent.hostId);
    assert.equal(after.phase, 'running');
    assert.equal((await dst.driver.status(vm.id)).state, 'running');
    assert.ok(!(await src.driver.list()).some((v) => v.id === vm.id), 'no copy is left on the source');
  });

  it('can still be superseded by a stop, which cancels the copy', async () => {
    const { vm, src, dst, taskId } = await restartDuringCopy('homebody');
    await until(async () => (await hostState(c, src.name)) === 'ready', { what: 'the source back' });
    const stop = await c.api('POST', '/api/v1/vms/homebody/stop', {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await c.waitTask(stop.body.task.id, 30_000)).state, 'succeeded');
    const migrate = (await c.api('GET', `/api/v1/tasks/${taskId}`)).body;
    assert.equal(migrate.state, 'cancelled', JSON.stringify(migrate));
    assert.match(migrate.message, /superseded by a stop/);
    assert.equal((await vmOf(c, 'homebody')).phase, 'stopped');
    assert.ok(!(await src.driver.list()).some((v) => v.id === vm.id && v.state !== 'stopped'), 'the source copy is stopped');
    assert.ok(!(await dst.driver.list()).some((v) => v.id === vm.id), 'nothing is left on the destination');
  });
});
