// Cloud Control on PostgreSQL: the same API flow as on SQLite, against the real server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { freshPostgres } from '../support/postgres.ts';

describe('control on PostgreSQL', () => {
  let c: Cluster;
  let drop: () => Promise<void>;
  before(async () => {
    const pg = await freshPostgres();
    drop = pg.drop;
    c = await startCluster({ hosts: 2, db: pg.url });
  });
  after(async () => {
    await c?.close();
    await drop?.();
  });

  it('creates, migrates, stops and deletes VMs, with events and tasks in PostgreSQL', async () => {
    const tasks = [];
    for (let i = 1; i <= 6; i++) tasks.push((await c.api('POST', '/api/v1/vms', { name: `pg-${i}`, cpus: 1, memoryMiB: 512 })).body.task.id);
    for (const id of tasks) assert.equal((await c.waitTask(id)).state, 'succeeded');
    const vms = (await c.api('GET', '/api/v1/vms')).body.items;
    assert.equal(new Set(vms.map((v: any) => v.hostId)).size, 2);
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/pg-1/migrate')).body.task.id)).state, 'succeeded');
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/pg-2/stop', {})).body.task.id)).state, 'succeeded');
    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/pg-3')).body.task.id)).state, 'succeeded');
    const dup = await c.api('POST', '/api/v1/vms', { name: 'pg-4', cpus: 1, memoryMiB: 512 });
    assert.equal(dup.status, 409);
    assert.equal(dup.body.error.code, 'NAME_TAKEN');
    const events = (await c.api('GET', '/api/v1/events?limit=1000')).body.items;
    assert.ok(events.some((e: any) => e.type === 'vm.migrated'));
    assert.ok(events.every((e: any, i: number) => i === 0 || e.seq > events[i - 1].seq));
    const phases = (await c.api('GET', '/api/v1/vms')).body.items.map((v: any) => `${v.name}:${v.phase}`).sort();
    assert.deepEqual(phases, ['pg-1:running', 'pg-2:stopped', 'pg-4:running', 'pg-5:running', 'pg-6:running']);
  });
});
