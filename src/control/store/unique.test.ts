// The database decides uniqueness on both engines: one name, one active task per VM, and every loser of
// a race is told so as a 409 (NAME_TAKEN, VM_BUSY), never a raw engine error.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { legacyDatabase } from '../../../test/support/legacy-store.ts';
import { freshPostgres } from '../../../test/support/postgres.ts';
import { type Store, openStore } from './db.ts';
import type { TaskRow, VmRow } from './schema.ts';
import { uniqueConflict } from './unique.ts';
import { untouched } from '../features/vms/store.ts';

const now = () => new Date().toISOString();
const vm = (id: string, name: string): VmRow => ({
  id, name, cpus: 1, memory_mib: 256, max_memory_mib: 256, image_id: null, disk_gib: 1, local_disk: 0, replicated: 0, ha: 0, ha_priority: 0, placement_labels: '{}', anti_affinity: null,
  nics: '[]', desired_power: 'running', deleting: 0, host_id: null, target_host_id: null, phase: 'pending', message: null,
  memory_actual_mib: null, ...untouched, generation: 1, observed_generation: 0, created_at: now(), updated_at: now(),
});
const task = (id: string, targetId: string, over: Partial<TaskRow> = {}): TaskRow => ({
  id, kind: 'start', target_kind: 'vm', target_id: targetId, state: 'running', progress: 0, message: null, error_code: null, error_message: null,
  result: null, params: null, created_by: null, created_at: now(), started_at: now(), finished_at: null, updated_at: now(), ...over,
});

for (const engine of ['sqlite', 'postgres'] as const) {
  describe(`uniqueness on ${engine}`, () => {
    let url: string;
    let store: Store;
    let cleanup: () => Promise<void>;
    before(async () => {
      if (engine === 'sqlite') {
        const dir = mkdtempSync(join(tmpdir(), 'awan-unique-'));
        url = `sqlite:${join(dir, 'awan.db')}`;
        cleanup = async () => rmSync(dir, { recursive: true, force: true });
      } else {
        const p = await freshPostgres();
        url = p.url;
        cleanup = p.drop;
      }
    });
    after(async () => {
      await store?.close();
      await cleanup?.();
    });

    it('upgrades a database holding two active tasks on one VM: the later wish stays, the other fails with the reason', async () => {
      // The schema as version 4 left it (the runner of those releases), with what a check-then-insert race could leave behind.
      const { db } = await legacyDatabase(url, 4);
      // Only the columns version 4 had.
      const { memory_target_mib, reboot_request, migrate_request, op, reboot_handled, migrate_handled, memory_applied_mib, resource_version, placement_token, ha_priority, ha_restarts, replicated, ...old } = vm('v1', 'one');
      await db.insertInto('vms').values(old as VmRow).execute();
      await db.insertInto('tasks').values([
        task('t1', 'v1', { kind: 'start', created_at: '2026-01-01T00:00:01.000Z' }),
        task('t2', 'v1', { kind: 'delete', created_at: '2026-01-01T00:00:02.000Z' }),
        task('t3', 'v1', { kind: 'stop', created_at: '2026-01-01T00:00:03.000Z' }),
      ]).execute();
      await db.destroy();

      store = await openStore(url);
      const rows = await store.db.selectFrom('tasks').select(['id', 'state', 'error_code', 'error_message']).orderBy('id').execute();
      assert.deepEqual(rows.map((r) => [r.id, r.state, r.error_code]), [['t1', 'failed', 'SUPERSEDED'], ['t2', 'running', null], ['t3', 'failed', 'SUPERSEDED']]);
      assert.match(rows[0].error_message ?? '', /superseded by the later delete task t2/);
    });

    it('keeps one active task per VM, whatever the finished ones and other objects hold', async () => {
      await store.db.insertInto('vms').values(vm('v2', 'two')).execute();
      await store.db.insertInto('tasks').values(task('a1', 'v2', { state: 'succeeded' })).execute();
      await store.db.insertInto('tasks').values(task('a2', 'v2')).execute();
      const err = await store.db.insertInto('tasks').values(task('a3', 'v2')).execute().then(() => undefined, (e: unknown) => e);
      assert.ok(err, 'a second active task on the VM is refused');
      assert.equal(uniqueConflict(err)?.code, 'VM_BUSY');
      assert.equal(uniqueConflict(err)?.status, 409);
      // Hosts may have several (a drain and its moves are tracked apart), and a finished task frees the VM.
      await store.db.insertInto('tasks').values([task('h1', 'host-x', { target_kind: 'host' }), task('h2', 'host-x', { target_kind: 'host' })]).execute();
      await store.db.updateTable('tasks').set({ state: 'failed' }).where('id', '=', 'a2').execute();
      await store.db.insertInto('tasks').values(task('a4', 'v2')).execute();
    });

    it('lets exactly one of 20 parallel inserts of one name through; the others are NAME_TAKEN', async () => {
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store.db.insertInto('vms').values(vm(`p${i}`, 'same')).execute()));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      const conflicts = results.flatMap((r) => (r.status === 'rejected' ? [uniqueConflict(r.reason)] : []));
      assert.equal(conflicts.length, 19);
      for (const c of conflicts) {
        assert.equal(c?.code, 'NAME_TAKEN');
        assert.match(c?.message ?? '', /^a VM (named same|with that name) already exists$/);
      }
    });

    it('lets exactly one of 20 parallel active tasks on one VM through; the others are VM_BUSY', async () => {
      await store.db.insertInto('vms').values(vm('v3', 'three')).execute();
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store.db.insertInto('tasks').values(task(`q${i}`, 'v3')).execute()));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      for (const r of results) if (r.status === 'rejected') assert.equal(uniqueConflict(r.reason)?.code, 'VM_BUSY');
    });

    it('names the user and image whose name is taken', async () => {
      const user = { id: 'u1', username: 'ann', password_hash: 'x', role: 'viewer' as const, created_at: now() };
      await store.db.insertInto('users').values(user).execute();
      const err = await store.db.insertInto('users').values({ ...user, id: 'u2' }).execute().then(() => undefined, (e: unknown) => e);
      assert.equal(uniqueConflict(err)?.code, 'NAME_TAKEN');
      assert.match(uniqueConflict(err)?.message ?? '', /^a user (named ann|with that name) already exists$/);
      assert.equal(uniqueConflict(new Error('something else')), undefined);
    });
  });
}
