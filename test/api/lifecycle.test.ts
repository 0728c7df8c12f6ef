// A user's day through the API: 20 VMs spread over the hosts, stopped, started, migrated, deleted, each
// task watched to its end; events stream live; the scheduler explains a failed placement.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('VM lifecycle through the API', () => {
  let c: Cluster;
  before(async () => { c = await startCluster({ hosts: 3 }); });
  after(async () => { await c?.close(); });

  it('creates 20 VMs and spreads them across the 3 hosts', async () => {
    const tasks = [];
    for (let i = 1; i <= 20; i++) {
      const r = await c.api('POST', '/api/v1/vms', { name: `web-${i}`, cpus: 1, memoryMiB: 512 });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.task.kind, 'create');
      tasks.push(r.body.task.id);
    }
    for (const id of tasks) {
      const t = await c.waitTask(id);
      assert.equal(t.state, 'succeeded', JSON.stringify(t));
    }
    const vms = (await c.api('GET', '/api/v1/vms?limit=100')).body.items;
    assert.equal(vms.length, 20);
    assert.ok(vms.every((v: any) => v.phase === 'running' && v.hostId));
    const perHost = new Map<string, number>();
    for (const v of vms) perHost.set(v.hostId, (perHost.get(v.hostId) ?? 0) + 1);
    assert.equal(perHost.size, 3);
    assert.ok(Math.max(...perHost.values()) - Math.min(...perHost.values()) <= 1, `spread evenly: ${[...perHost.values()]}`);
    // The hosts agree: each reports the VMs control placed there.
    for (const h of c.hosts) {
      const hostId = h.agent.hostId!;
      assert.equal((await h.driver.list()).length, perHost.get(hostId));
    }
  });

  it('pages through VMs with a cursor and filters by host and phase', async () => {
    const first = (await c.api('GET', '/api/v1/vms?limit=8')).body;
    const second = (await c.api('GET', `/api/v1/vms?limit=8&cursor=${first.nextCursor}`)).body;
    const third = (await c.api('GET', `/api/v1/vms?limit=8&cursor=${second.nextCursor}`)).body;
    assert.equal(third.nextCursor, null);
    const names = [...first.items, ...second.items, ...third.items].map((v: any) => v.name);
    assert.equal(new Set(names).size, 20);
    const hostId = first.items[0].hostId;
    const onHost = (await c.api('GET', `/api/v1/vms?host=${hostId}`)).body.items;
    assert.ok(onHost.length > 0 && onHost.every((v: any) => v.hostId === hostId));
    assert.equal((await c.api('GET', '/api/v1/vms?phase=stopped')).body.items.length, 0);
  });

  it('stops and starts a VM', async () => {
    const stop = await c.api('POST', '/api/v1/vms/web-1/stop', {});
    assert.equal(stop.status, 202);
    assert.equal((await c.waitTask(stop.body.task.id)).state, 'succeeded');
    const stopped = (await c.api('GET', '/api/v1/vms/web-1')).body;
    assert.equal(stopped.phase, 'stopped');
    assert.equal(stopped.hostId, null);
    // A stopped VM is placed afresh on its next start, so no host keeps a definition of it.
    for (const h of c.hosts) assert.ok(!(await h.driver.list()).some((v) => v.name === 'web-1'));

    const start = await c.api('POST', '/api/v1/vms/web-1/start');
    assert.equal((await c.waitTask(start.body.task.id)).state, 'succeeded');
    const running = (await c.api('GET', '/api/v1/vms/web-1')).body;
    assert.equal(running.phase, 'running');
    assert.ok(running.generation > stopped.generation);
    assert.equal(running.observedGeneration, running.generation);
  });

  it('migrates a running VM to a chosen host, with progress and timings on the task', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/web-2')).body;
    const target = c.hosts.find((h) => h.agent.hostId !== vm.hostId)!;
    const r = await c.api('POST', '/api/v1/vms/web-2/migrate', { host: target.name });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const task = await c.waitTask(r.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal(task.progress, 100);
    assert.equal(typeof task.result.totalMs, 'number');
    assert.equal(typeof task.result.downtimeMs, 'number');
    const moved = (await c.api('GET', '/api/v1/vms/web-2')).body;
    assert.equal(moved.hostId, target.agent.hostId);
    assert.equal(moved.phase, 'running');
    assert.equal((await target.driver.status(vm.id)).state, 'running');
  });

  it('migrates without a target: the scheduler picks another host', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/web-3')).body;
    const r = await c.api('POST', '/api/v1/vms/web-3/migrate');
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    const moved = (await c.api('GET', '/api/v1/vms/web-3')).body;
    assert.notEqual(moved.hostId, vm.hostId);
  });

  it('refuses a second operation while one runs (409 CONFLICT)', async () => {
    const stop = await c.api('POST', '/api/v1/vms/web-4/stop', { force: true });
    const again = await c.api('POST', '/api/v1/vms/web-4/reboot');
    assert.ok([409].includes(again.status), JSON.stringify(again.body));
    assert.ok(['VM_BUSY', 'INVALID_STATE'].includes(again.body.error.code));
    await c.waitTask(stop.body.task.id);
  });

  it('deletes a VM: gone from control and from its host', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/web-5')).body;
    const host = c.hosts.find((h) => h.agent.hostId === vm.hostId)!;
    const r = await c.api('DELETE', '/api/v1/vms/web-5');
    assert.equal(r.status, 202);
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    assert.equal((await c.api('GET', '/api/v1/vms/web-5')).status, 404);
    assert.ok(!(await host.driver.list()).some((v) => v.id === vm.id));
  });

  it('fails a start the host cannot boot, with the host\'s reason, and leaves nothing behind on the host', async () => {
    for (const h of c.hosts) h.driver.failNextStart('no bootable disk');
    const r = await c.api('POST', '/api/v1/vms', { name: 'doomed', cpus: 1, memoryMiB: 256 });
    const task = await c.waitTask(r.body.task.id);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'BOOT_FAILED');
    assert.match(task.error.message, /no bootable disk/);
    const vm = (await c.api('GET', '/api/v1/vms/doomed')).body;
    assert.equal(vm.phase, 'failed');
    assert.equal(vm.hostId, null);
    for (const h of c.hosts) assert.ok(!(await h.driver.list()).some((v) => v.id === vm.id));
    const counted = (await c.api('GET', '/api/v1/hosts')).body.items.reduce((n: number, h: any) => n + h.vmCount, 0);
    const running = (await c.api('GET', '/api/v1/vms?phase=running')).body.items.length;
    assert.equal(counted, running, 'hosts count only the VMs they run');
    await c.waitTask((await c.api('DELETE', '/api/v1/vms/doomed')).body.task.id);
    for (const h of c.hosts) h.driver.failNextStart(undefined);
  });

  it('explains a placement that fails for lack of room', async () => {
    // Each host has 16 GiB; 12 GiB twice fits on two hosts, then the third of them cannot find room.
    const big = [];
    for (const name of ['big-1', 'big-2', 'big-3', 'big-4']) {
      const r = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 12 * 1024 });
      assert.equal(r.status, 202);
      big.push(await c.waitTask(r.body.task.id));
    }
    const failed = big.filter((t) => t.state === 'failed');
    assert.ok(failed.length >= 1, 'at least one placement fails');
    assert.equal(failed[0].error.code, 'NO_CAPACITY');
    assert.match(failed[0].error.message, /no host has 12288 MiB and 1 CPUs free: 3 hosts considered \(3 too little free memory\)/);
    const vm = (await c.api('GET', `/api/v1/vms/${failed[0].targetId}`)).body;
    assert.equal(vm.phase, 'failed');
  });

  it('streams events as Server-Sent Events', async () => {
    const ac = new AbortController();
    const res = await fetch(`${c.url}/api/v1/events`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${c.token}` }, signal: ac.signal });
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const reader = res.body!.getReader();
    let text = '';
    const created = await c.api('POST', '/api/v1/vms', { name: 'sse-vm', cpus: 1, memoryMiB: 256 });
    await until(async () => {
      const { value } = await reader.read();
      text += new TextDecoder().decode(value);
      return text.includes('event: vm.running') && text.includes(created.body.vm.id);
    }, { what: 'vm.running over SSE' });
    ac.abort();
    assert.match(text, /event: vm.created/);
  });

  it('serves health, readiness, metrics and the OpenAPI document', async () => {
    assert.equal((await fetch(`${c.url}/healthz`)).status, 200);
    assert.equal((await fetch(`${c.url}/readyz`)).status, 200);
    const metrics = await (await fetch(`${c.url}/metrics`)).text();
    // Two VMs migrated above, live (the simulator always copies live).
    const migrations = ['awan_migration_downtime_seconds_count{mode="live"} 2', 'awan_migration_duration_seconds_count{mode="live"} 2'];
    for (const name of ['awan_http_request_duration_seconds_bucket', 'awan_hosts{state="ready"} 3', 'awan_vms{phase="running"}', 'awan_heartbeat_lag_seconds', 'awan_reconcile_queue_depth', 'awan_reconcile_errors_total', 'awan_heartbeats_total', ...migrations]) {
      assert.ok(metrics.includes(name), `metrics include ${name}`);
    }
    const doc = (await (await fetch(`${c.url}/api/v1/openapi.json`)).json()) as any;
    assert.equal(doc.openapi, '3.1.0');
    for (const p of ['/api/v1/vms', '/api/v1/vms/{id}/migrate', '/api/v1/hosts', '/api/v1/tasks/{id}', '/api/v1/events', '/api/v1/auth/login']) assert.ok(doc.paths[p], `OpenAPI has ${p}`);
    assert.equal((await fetch(`${c.url}/docs`, { redirect: 'follow' })).status, 200);
  });
});
