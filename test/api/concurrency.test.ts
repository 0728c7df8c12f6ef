// Requests that race each other: the database decides who wins a name or a VM's one active task, and
// every loser gets a 409 with the reason, never a 500 or a second winner.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

const N = 20;

function tally(results: { status: number; body: any }[]) {
  const by = new Map<string, number>();
  for (const r of results) {
    const key = r.status >= 400 ? `${r.status} ${r.body?.error?.code}` : String(r.status);
    by.set(key, (by.get(key) ?? 0) + 1);
  }
  return Object.fromEntries([...by].sort());
}

describe('concurrent requests', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: 1000 } });
  });
  after(async () => { await c?.close(); });

  it('20 parallel creates of one VM name: one VM, 19 × 409 NAME_TAKEN', async () => {
    const results = await Promise.all(Array.from({ length: N }, () => c.api('POST', '/api/v1/vms', { name: 'race-vm', cpus: 1, memoryMiB: 64, start: false })));
    assert.deepEqual(tally(results), { '202': 1, '409 NAME_TAKEN': N - 1 });
    const listed = (await c.api('GET', '/api/v1/vms?name=race-vm')).body.items;
    assert.equal(listed.length, 1);
  });

  it('20 parallel creates of one image name: one image, 19 × 409 NAME_TAKEN', async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    const dir = join(c.dir, 'pool', 'images');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'race.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
    const results = await Promise.all(Array.from({ length: N }, () => c.api('POST', '/api/v1/images', { name: 'race-image', format: 'qcow2', path })));
    assert.deepEqual(tally(results), { '201': 1, '409 NAME_TAKEN': N - 1 });
  });

  it('20 parallel creates of one user: one user, 19 × 409 NAME_TAKEN', async () => {
    const results = await Promise.all(Array.from({ length: N }, () => c.api('POST', '/api/v1/users', { username: 'race-user', password: 'long-enough-1', role: 'viewer' })));
    assert.deepEqual(tally(results), { '201': 1, '409 NAME_TAKEN': N - 1 });
  });

  it('20 parallel actions on one VM: exactly one is accepted, the others are 409 and leave no task behind', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'busy-vm', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 2048 });
    await c.waitTask(created.body.task.id);
    const vm = (await c.api('GET', '/api/v1/vms/busy-vm')).body;
    assert.equal(vm.phase, 'running', vm.message);
    // Memory changes and reboots leave the VM running, so only the one-task rule can tell them apart.
    const inject = (url: string, payload: unknown) =>
      c.control.app.inject({ method: 'POST', url, payload: payload as object, headers: { authorization: `Bearer ${c.token}` } }).then((r) => ({ status: r.statusCode, body: r.json() }));
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) => (i % 2 === 0 ? inject('/api/v1/vms/busy-vm/memory', { targetMiB: 512 + i * 16 }) : inject('/api/v1/vms/busy-vm/reboot', {}))),
    );
    const won = results.filter((r) => r.status === 202);
    assert.equal(won.length, 1, JSON.stringify(tally(results)));
    assert.deepEqual(tally(results), { '202': 1, '409 VM_BUSY': N - 1 });
    const recorded = (await c.api('GET', `/api/v1/tasks?targetId=${vm.id}`)).body.items.filter((t: { kind: string }) => t.kind !== 'create');
    assert.deepEqual(recorded.map((t: { id: string }) => t.id), [won[0].body.task.id]);
    await c.waitTask(won[0].body.task.id);
  });

  it('a stop and a migration asked at once: the stop wins, every migration ends, the VM is stopped', async () => {
    const created = await c.api('POST', '/api/v1/vms', { name: 'torn-vm', cpus: 1, memoryMiB: 64 });
    await c.waitTask(created.body.task.id);
    const vm = (await c.api('GET', '/api/v1/vms/torn-vm')).body;
    assert.equal(vm.phase, 'running', vm.message);
    const results = await Promise.all(Array.from({ length: N }, (_, i) => c.api('POST', `/api/v1/vms/torn-vm/${i % 2 ? 'stop' : 'migrate'}`, {})));
    // A stop supersedes a migration at any moment; a second stop or migration meanwhile is refused.
    for (const r of results) if (r.status !== 202) assert.ok(r.status === 409 && ['VM_BUSY', 'INVALID_STATE'].includes(r.body.error.code), JSON.stringify(r.body));
    const accepted = results.filter((r) => r.status === 202).map((r) => r.body.task);
    assert.ok(accepted.some((t: { kind: string }) => t.kind === 'stop'), JSON.stringify(tally(results)));
    for (const t of accepted) {
      const done = await c.waitTask(t.id);
      if (t.kind === 'stop') assert.equal(done.state, 'succeeded', JSON.stringify(done));
      else assert.ok(['cancelled', 'succeeded'].includes(done.state), JSON.stringify(done));
    }
    assert.equal((await c.api('GET', '/api/v1/vms/torn-vm')).body.phase, 'stopped');
    const recorded = (await c.api('GET', `/api/v1/tasks?targetId=${vm.id}`)).body.items.filter((t: { kind: string }) => t.kind !== 'create');
    assert.deepEqual(recorded.map((t: { id: string }) => t.id).sort(), accepted.map((t: { id: string }) => t.id).sort());
  });
});
