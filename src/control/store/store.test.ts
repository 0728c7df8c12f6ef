// The store behaves the same on SQLite and PostgreSQL: migrations, constraints, ordering, concurrency.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freshPostgres } from '../../../test/support/postgres.ts';
import { createEventService } from '../features/events/service.ts';
import { type Store, openStore } from './db.ts';
import type { VmRow } from './schema.ts';
import { untouched } from '../features/vms/store.ts';

const vm = (id: string, name: string): VmRow => ({
  id, name, cpus: 1, memory_mib: 256, max_memory_mib: 256, image_id: null, disk_gib: 1, local_disk: 0, replicated: 0, ha: 0, ha_priority: 0, placement_labels: '{}', anti_affinity: null,
  nics: '[]', desired_power: 'running', deleting: 0, host_id: null, target_host_id: null, phase: 'pending', message: null,
  memory_actual_mib: null, ...untouched, generation: 1, observed_generation: 0, created_at: new Date().toISOString(), updated_at: new Date().toISOString(),
});

for (const engine of ['sqlite', 'postgres'] as const) {
  describe(`store on ${engine}`, () => {
    let store: Store;
    let url: string;
    let cleanup: () => Promise<void>;
    before(async () => {
      if (engine === 'sqlite') {
        const dir = mkdtempSync(join(tmpdir(), 'awan-store-'));
        url = `sqlite:${join(dir, 'awan.db')}`;
        cleanup = async () => rmSync(dir, { recursive: true, force: true });
      } else {
        const pg = await freshPostgres();
        url = pg.url;
        cleanup = pg.drop;
      }
      store = await openStore(url);
    });
    after(async () => {
      await store?.close();
      await cleanup?.();
    });

    it('migrates once: opening again keeps the data and applies nothing twice', async () => {
      await store.db.insertInto('vms').values(vm('a', 'alpha')).execute();
      const again = await openStore(url);
      const rows = await again.db.selectFrom('vms').select('name').execute();
      await again.close();
      assert.deepEqual(rows.map((r) => r.name), ['alpha']);
    });

    it('refuses a duplicate VM name', async () => {
      await assert.rejects(store.db.insertInto('vms').values(vm('b', 'alpha')).execute(), /unique|duplicate/i);
    });

    it('updates with a generation check: a stale writer changes nothing', async () => {
      const first = await store.db.updateTable('vms').set({ phase: 'running', generation: 2 }).where('id', '=', 'a').where('generation', '=', 1).executeTakeFirst();
      const stale = await store.db.updateTable('vms').set({ phase: 'failed', generation: 2 }).where('id', '=', 'a').where('generation', '=', 1).executeTakeFirst();
      assert.equal(Number(first.numUpdatedRows), 1);
      assert.equal(Number(stale.numUpdatedRows), 0);
      const row = await store.db.selectFrom('vms').select('phase').where('id', '=', 'a').executeTakeFirstOrThrow();
      assert.equal(row.phase, 'running');
    });

    it('rolls back a failed transaction whole', async () => {
      await assert.rejects(
        store.db.transaction().execute(async (trx) => {
          await trx.insertInto('vms').values(vm('c', 'gamma')).execute();
          await trx.insertInto('vms').values(vm('d', 'alpha')).execute();
        }),
      );
      const gamma = await store.db.selectFrom('vms').select('id').where('name', '=', 'gamma').executeTakeFirst();
      assert.equal(gamma, undefined);
    });

    it('numbers events in order and lists them after a sequence number', async () => {
      const events = createEventService({ db: store.db });
      const seqs: number[] = [];
      for (let i = 0; i < 5; i++) seqs.push((await events.emit({ type: 'test', objectKind: 'vm', objectId: 'a', message: `e${i}` })).seq);
      assert.deepEqual([...seqs].sort((x, y) => x - y), seqs);
      assert.equal(typeof seqs[0], 'number');
      const later = await events.list({ after: seqs[1], limit: 10 });
      assert.deepEqual(later.map((e) => e.message), ['e2', 'e3', 'e4']);
    });
  });
}
