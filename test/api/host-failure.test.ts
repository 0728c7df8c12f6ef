// A host whose agent dies turns unreachable within 3 heartbeat intervals and its VMs unknown; when the
// agent returns, the host is ready again and what it reports is reconciled.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

const HEARTBEAT_MS = 200;

describe('host failure and return', () => {
  let c: Cluster;
  before(async () => { c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: HEARTBEAT_MS } }); });
  after(async () => { await c?.close(); });

  it('marks a silent host unreachable and its VMs unknown, then reconciles on return', async () => {
    for (let i = 1; i <= 4; i++) {
      const r = await c.api('POST', '/api/v1/vms', { name: `app-${i}`, cpus: 1, memoryMiB: 256 });
      await c.waitTask(r.body.task.id);
    }
    const victim = c.hosts[0];
    const hostId = victim.agent.hostId!;
    const onVictim = (await c.api('GET', `/api/v1/vms?host=${hostId}`)).body.items;
    assert.ok(onVictim.length > 0);

    // The agent goes silent without closing its socket, as a frozen or cut-off server would.
    (victim.agent as unknown as { heartbeat: NodeJS.Timeout }).heartbeat && clearInterval((victim.agent as unknown as { heartbeat: NodeJS.Timeout }).heartbeat);
    const host = await until(async () => {
      const h = (await c.api('GET', `/api/v1/hosts/${hostId}`)).body;
      return h.state === 'unreachable' ? h : undefined;
    }, { what: 'host unreachable' });
    // Control says how long the host had been silent when it gave up on it: under 3 intervals.
    const marked = (await c.api('GET', `/api/v1/events?object=${hostId}&type=host.unreachable`)).body.items[0];
    const silentMs = Number(/no heartbeat for (\d+) ms/.exec(marked.message)?.[1]);
    assert.ok(silentMs > 0 && silentMs <= 3 * HEARTBEAT_MS, `marked unreachable after ${silentMs} ms of silence`);
    assert.equal(host.connected, false);
    await until(async () => {
      const vms = (await c.api('GET', `/api/v1/vms?host=${hostId}`)).body.items;
      return vms.length === onVictim.length && vms.every((v: any) => v.phase === 'unknown');
    }, { what: 'VMs unknown' });

    // While the host was away one of its VMs stopped on its own; the return reconciles that too.
    await victim.agent.stop();
    await victim.driver.stop(onVictim[0].id, { force: true });
    await c.startAgent(victim);
    await until(async () => (await c.api('GET', `/api/v1/hosts/${hostId}`)).body.state === 'ready', { what: 'host ready again' });
    await until(async () => {
      const vms = (await c.api('GET', `/api/v1/vms?host=${hostId}`)).body.items;
      return vms.length === onVictim.length && vms.every((v: any) => v.phase === 'running');
    }, { what: 'VMs running again' });
    // Control wanted the stopped VM running, so it was started again on its host.
    assert.equal((await victim.driver.status(onVictim[0].id)).state, 'running');
  });

  it('turns a host unreachable at once when its agent process dies (socket closed)', async () => {
    const victim = c.hosts[1];
    const hostId = victim.agent.hostId!;
    await victim.agent.stop();
    await until(async () => (await c.api('GET', `/api/v1/hosts/${hostId}`)).body.state === 'unreachable', { what: 'unreachable' });
    await c.startAgent(victim);
    await until(async () => (await c.api('GET', `/api/v1/hosts/${hostId}`)).body.state === 'ready', { what: 'ready' });
  });

  it('reports a VM the host runs but control does not know, and leaves it running', async () => {
    const host = c.hosts[1];
    await host.driver.start({ id: 'stray-vm', name: 'stray', cpus: 1, memoryMiB: 128, maxMemoryMiB: 128, boot: { kind: 'none' }, disks: [], nics: [] });
    await until(async () => (await c.api('GET', '/api/v1/events?type=host.unknown-vm')).body.items.some((e: any) => e.data?.vmId === 'stray-vm'), { what: 'unknown VM reported' });
    assert.equal((await host.driver.status('stray-vm')).state, 'running');
  });

  it('records a VM where a host reports it running, and never starts a second copy', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'wanderer', cpus: 1, memoryMiB: 256 });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    const vm = (await c.api('GET', '/api/v1/vms/wanderer')).body;
    const [a, b] = [c.hosts.find((h) => h.agent.hostId === vm.hostId)!, c.hosts.find((h) => h.agent.hostId !== vm.hostId)!];
    // While A is silent, the VM moves to B behind control's back (as a migration whose end it missed).
    await c.stopAgent(a);
    await until(async () => (await c.api('GET', '/api/v1/vms/wanderer')).body.phase === 'unknown', { what: 'unknown' });
    await a.driver.delete(vm.id);
    await b.driver.start({ id: vm.id, name: vm.name, cpus: 1, memoryMiB: 256, maxMemoryMiB: 256, boot: { kind: 'none' }, disks: [], nics: [] });
    await until(async () => (await c.api('GET', '/api/v1/vms/wanderer')).body.hostId === b.agent.hostId, { what: 'VM recorded on B' });
    await c.startAgent(a);
    await until(async () => (await c.api('GET', `/api/v1/hosts/${a.agent.hostId}`)).body.state === 'ready', { what: 'A back' });
    await until(async () => (await c.api('GET', '/api/v1/vms/wanderer')).body.phase === 'running', { what: 'running' });
    assert.equal((await c.api('GET', '/api/v1/vms/wanderer')).body.hostId, b.agent.hostId);
    assert.ok(!(await a.driver.list()).some((v) => v.id === vm.id), 'no second copy on A');
  });
});
