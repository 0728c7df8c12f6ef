// Memory leases on PostgreSQL: the same lifecycle as on SQLite, against the real server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { borrow, createVm, holds, lease, lentBy } from '../support/leases.ts';
import { freshPostgres } from '../support/postgres.ts';

describe('memory leases on PostgreSQL', () => {
  let c: Cluster;
  let drop: () => Promise<void>;
  before(async () => {
    const pg = await freshPostgres();
    drop = pg.drop;
    c = await startCluster({ hosts: 2, db: pg.url, control: { memoryPolicy: { pressureCheckMs: 3_600_000 } } });
    await createVm(c, { name: 'pg-b', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 2048 });
  });
  after(async () => {
    await c?.close();
    await drop?.();
  });

  it('grants by growing and from a donor, returns both, and counts them', async () => {
    for (const mechanism of ['grow', 'remote']) {
      const r = await borrow(c, { vmId: 'pg-b', sizeMiB: 256, kind: 'temporary', mechanism });
      assert.equal((await c.waitTask(r.task.id)).state, 'succeeded');
      assert.equal((await lease(c, r.lease.id)).mechanism, mechanism);
      const back = await c.api('POST', `/api/v1/memory/leases/${r.lease.id}/return`);
      assert.equal((await c.waitTask(back.body.task.id)).state, 'succeeded');
      assert.equal((await lease(c, r.lease.id)).state, 'returned');
    }
    await holds(c, 'pg-b', 1024);
    for (const h of c.hosts) assert.equal(await lentBy(c, h), 0);
    const page = (await c.api('GET', '/api/v1/memory/leases?limit=1')).body;
    assert.equal(page.items.length, 1);
    assert.ok(page.nextCursor);
    assert.match(await (await fetch(`${c.url}/metrics`)).text(), /awan_memory_leases\{state="returned"\} 2/);
  });
});
