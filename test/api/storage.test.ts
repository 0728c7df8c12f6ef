// Pools and volumes through the API: each host's local pool appears when it connects, the shared pool is
// registered at start, a VM's disk is a volume that agents make, grow and delete (control only records).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AgentConnection, type SendOptions } from '../../src/control/features/agents/connection.ts';
import type { Command } from '../../src/protocol/messages.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('pools and volumes', () => {
  let c: Cluster;
  /** Every volume command control sends to an agent, as sent. */
  const sent: { hostId: string; command: Command }[] = [];
  const command = AgentConnection.prototype.command;
  before(async () => {
    c = await startCluster({ hosts: 2, control: { inspectImage: async (img) => ({ sizeMiB: 1024, path: img.path }) } });
    // On the class, so a connection made by a reconnect is watched too.
    AgentConnection.prototype.command = function (this: AgentConnection, cmd: Command, opts?: SendOptions) {
      if (cmd.op.startsWith('volume')) sent.push({ hostId: this.hostId, command: cmd });
      return command.call(this, cmd, opts);
    } as typeof command;
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'tmpl', format: 'qcow2', path: join(c.dir, 'tmpl.qcow2') })).status, 201);
  });
  after(async () => {
    AgentConnection.prototype.command = command;
    await c?.close();
  });

  const pool = (name: string) => c.api('GET', `/api/v1/pools/${name}`);
  const volumesOf = async (vmId: string) => (await c.api('GET', `/api/v1/volumes?vm=${vmId}`)).body.items;

  it('lists the shared pool and one local pool per host, with the space their agents report', async () => {
    const items = await until(async () => {
      const r = (await c.api('GET', '/api/v1/pools')).body.items;
      return r.length === 3 && r.every((p: any) => p.freeMiB !== null) ? r : undefined;
    }, { what: 'three pools with free space' });
    const shared = items.find((p: any) => p.type === 'shared');
    assert.equal(shared.name, 'shared');
    assert.equal(shared.path, join(c.dir, 'pool'));
    assert.equal(shared.hostId, null);
    assert.deepEqual([...shared.hosts].sort(), c.hosts.map((h) => h.agent.hostId).sort(), 'every host reaches it');
    for (const h of c.hosts) {
      const local = items.find((p: any) => p.type === 'local' && p.hostId === h.agent.hostId);
      assert.ok(local, `${h.name} has a local pool`);
      assert.equal(local.name, `${h.name}-local`);
      assert.equal(local.path, join(h.dataDir, 'local-pool'));
      assert.ok(local.capacityMiB > 0 && local.freeMiB <= local.capacityMiB);
      assert.deepEqual(local.hosts, [h.agent.hostId]);
    }
    const onHost = (await c.api('GET', `/api/v1/pools?host=${c.hosts[0].agent.hostId}`)).body.items;
    assert.deepEqual(onHost.map((p: any) => p.name), ['host-1-local']);
  });

  it('a host that joins later brings its own local pool', async () => {
    const h = await c.addHost('host-3');
    const local = await until(async () => (await c.api('GET', '/api/v1/pools?type=local')).body.items.find((p: any) => p.hostId === h.agent.hostId));
    assert.equal(local.name, 'host-3-local');
    const again = await c.api('GET', `/api/v1/pools/${local.id}`);
    assert.equal(again.status, 200);
    assert.equal(again.body.name, 'host-3-local');
  });

  it('gets pools by id or name, pages through them, and answers 404 and 400 in the error shape', async () => {
    const first = await c.api('GET', '/api/v1/pools?limit=2');
    assert.equal(first.body.items.length, 2);
    assert.ok(first.body.nextCursor);
    const second = await c.api('GET', `/api/v1/pools?limit=2&cursor=${first.body.nextCursor}`);
    assert.equal(second.body.nextCursor, null);
    const names = [...first.body.items, ...second.body.items].map((p: any) => p.name);
    assert.equal(new Set(names).size, 4);

    const missing = await pool('nope');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'POOL_NOT_FOUND');
    for (const q of ['limit=0', 'limit=abc', 'type=nfs', 'colour=red', 'cursor=x']) {
      const r = await c.api('GET', `/api/v1/pools?${q}`);
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
      assert.ok(['VALIDATION_FAILED', 'BAD_REQUEST'].includes(r.body.error.code));
    }
  });

  it('registers a shared pool (admin), refusing local ones, relative paths, unknown fields and taken names', async () => {
    const made = await c.api('POST', '/api/v1/pools', { name: 'nfs-a', type: 'shared', path: '/mnt/nfs-a' });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.equal(made.body.type, 'shared');
    assert.equal(made.body.capacityMiB, null, 'no host has reported on it yet');
    for (const [body, code] of [
      [{ name: 'mine', type: 'local', path: '/x' }, 'VALIDATION_FAILED'],
      [{ name: 'rel', type: 'shared', path: 'x/y' }, 'VALIDATION_FAILED'],
      [{ name: 'extra', type: 'shared', path: '/y', size: 3 }, 'VALIDATION_FAILED'],
      [{ name: 'bad name!', type: 'shared', path: '/z' }, 'VALIDATION_FAILED'],
      [{ name: 'nfs-a', type: 'shared', path: '/mnt/other' }, 'NAME_TAKEN'],
      [{ name: 'nfs-b', type: 'shared', path: '/mnt/nfs-a' }, 'CONFLICT'],
    ] as const) {
      const r = await c.api('POST', '/api/v1/pools', body);
      assert.equal(r.body.error?.code, code, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.ok(r.status === 400 || r.status === 409);
    }
    assert.equal((await pool('mine')).status, 404);
  });

  it('makes a VM\'s disk as a volume in the shared pool, through an agent', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'disky', cpus: 1, memoryMiB: 256, image: 'tmpl', diskGiB: 2 });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    const [v] = await until(async () => {
      const vs = await volumesOf(r.body.vm.id);
      return vs.length === 1 && vs[0].state === 'ready' ? vs : undefined;
    }, { what: 'the VM\'s volume ready' });
    assert.equal(v.name, `vms/${r.body.vm.id}/disk0.qcow2`);
    assert.equal(v.poolId, (await pool('shared')).body.id);
    assert.equal(v.sizeMiB, 2048);
    assert.equal(v.actualSizeMiB, 2048);
    assert.equal(v.backingPath, join(c.dir, 'tmpl.qcow2'));
    assert.equal((await c.memory.pool(join(c.dir, 'pool'))!.info(v.name))?.sizeMiB, 2048, 'the hosts\' shared pool holds it');
    assert.ok(sent.some((s) => s.command.op === 'volumeCreate' && s.command.name === v.name));
    const one = await c.api('GET', `/api/v1/volumes/${v.id}`);
    assert.equal(one.status, 200);
    assert.equal(one.body.id, v.id);
    const inPool = (await c.api('GET', '/api/v1/volumes?pool=shared')).body.items;
    assert.ok(inPool.some((x: any) => x.id === v.id));
  });

  it('pages through volumes and answers 404 and 400 in the error shape', async () => {
    for (const name of ['d2', 'd3']) {
      const r = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 128, image: 'tmpl' });
      await c.waitTask(r.body.task.id);
    }
    const all = await until(async () => {
      const items = (await c.api('GET', '/api/v1/volumes')).body.items;
      return items.length >= 3 ? items : undefined;
    });
    const first = (await c.api('GET', '/api/v1/volumes?limit=2')).body;
    assert.equal(first.items.length, 2);
    const rest = (await c.api('GET', `/api/v1/volumes?limit=100&cursor=${first.nextCursor}`)).body;
    assert.equal(first.items.length + rest.items.length, all.length);
    assert.equal(new Set([...first.items, ...rest.items].map((v: any) => v.id)).size, all.length);

    const missing = await c.api('GET', '/api/v1/volumes/8d6f2f0e-0000-4000-8000-000000000000');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'VOLUME_NOT_FOUND');
    const badPool = await c.api('GET', '/api/v1/volumes?pool=nope');
    assert.equal(badPool.status, 404);
    assert.equal(badPool.body.error.code, 'POOL_NOT_FOUND');
    for (const q of ['limit=-1', 'limit=1001', 'size=3']) {
      const r = await c.api('GET', `/api/v1/volumes?${q}`);
      assert.equal(r.status, 400, q);
      assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    }
    assert.equal((await c.api('POST', '/api/v1/volumes', {})).status, 405, 'volumes are made through VMs');
  });

  it('grows a stopped VM\'s disk through an agent, and refuses a growth the pool has no room for', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/disky')).body;
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/disky/stop', {})).body.task.id)).state, 'succeeded');
    const grown = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 3 });
    assert.equal(grown.status, 200, JSON.stringify(grown.body));
    assert.equal(grown.body.diskGiB, 3);
    const [v] = await until(async () => {
      const vs = await volumesOf(vm.id);
      return vs[0]?.actualSizeMiB === 3072 && vs[0].state === 'ready' ? vs : undefined;
    }, { what: 'the volume grown' });
    assert.equal(v.observedGeneration, v.generation);
    assert.equal((await c.memory.pool(join(c.dir, 'pool'))!.info(v.name))?.sizeMiB, 3072);
    assert.ok(sent.some((s) => s.command.op === 'volumeGrow' && s.command.name === v.name && s.command.sizeMiB === 3072), 'an agent grew it');

    const huge = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 65536 });
    assert.equal(huge.status, 422, JSON.stringify(huge.body));
    assert.equal(huge.body.error.code, 'NO_CAPACITY');
    assert.match(huge.body.error.message, /the pool has \d+ GiB free \(pool shared\)/);
    assert.equal((await volumesOf(vm.id))[0].sizeMiB, 3072, 'nothing recorded');
  });

  it('deletes a VM\'s volume with the VM, through an agent', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/disky')).body;
    const [v] = await volumesOf(vm.id);
    const shared = c.memory.pool(join(c.dir, 'pool'))!;
    assert.ok(shared.names().includes(v.name));
    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/disky')).body.task.id)).state, 'succeeded');
    await until(async () => (await c.api('GET', `/api/v1/volumes/${v.id}`)).status === 404, { what: 'the volume row gone' });
    assert.ok(!shared.names().includes(v.name), 'the pool no longer holds it');
    assert.ok(sent.some((s) => s.command.op === 'volumeDelete' && s.command.name === v.name), 'an agent deleted it');
  });

  it('keeps a host-local VM\'s disk in its host\'s pool, and deletes it there', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'loc', cpus: 1, memoryMiB: 128, image: 'tmpl', storage: 'local' });
    assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
    const vm = (await c.api('GET', '/api/v1/vms/loc')).body;
    const host = c.hosts.find((h) => h.agent.hostId === vm.hostId)!;
    const local = (await c.api('GET', `/api/v1/pools/${host.name}-local`)).body;
    const [v] = await until(async () => {
      const vs = await volumesOf(vm.id);
      return vs[0]?.state === 'ready' ? vs : undefined;
    });
    assert.equal(v.poolId, local.id);
    const pool = c.memory.pool(join(host.dataDir, 'local-pool'))!;
    assert.ok(pool.names().includes(v.name));
    assert.ok(sent.some((s) => s.command.op === 'volumeCreate' && s.command.name === v.name && s.hostId === host.agent.hostId), 'made by its own host');
    // Export: what replication and memory loans build on, over the agent protocol.
    const conn = c.control.registry.get(host.agent.hostId!)!.connection!;
    const ref = { type: 'local' as const, path: local.path };
    const e = await conn.command<{ nbd: string; exportName: string }>({ op: 'volumeExport', pool: ref, name: v.name });
    assert.match(e.nbd, new RegExp(`^${host.name}:\\d+$`), 'served at the host\'s address');
    await conn.command({ op: 'volumeUnexport', pool: ref, name: v.name });
    const other = c.hosts.find((h) => h !== host)!;
    await assert.rejects(
      c.control.registry.get(other.agent.hostId!)!.connection!.command({ op: 'volumeExport', pool: ref, name: v.name }),
      (err: any) => err.code === 'POOL_NOT_FOUND',
      'another host does not have this host\'s local pool',
    );
    await c.waitTask((await c.api('DELETE', '/api/v1/vms/loc')).body.task.id);
    await until(async () => !pool.names().includes(v.name), { what: 'the local volume gone' });
    await until(async () => (await c.api('GET', `/api/v1/volumes/${v.id}`)).status === 404);
  });
});
