// Migrations on both engines through Kysely's Migrator: a fresh database, one the old runner made, migrations
// merged out of number order, a failing one, replicas starting together on PostgreSQL, and pg's int8 parser
// staying on our own pool.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { type Kysely, sql } from 'kysely';
import pg from 'pg';
import { legacyDatabase } from '../../../test/support/legacy-store.ts';
import { freshPostgres } from '../../../test/support/postgres.ts';
import { until } from '../../../test/until.ts';
import { MIGRATION_TABLE, openStore } from './db.ts';
import { type MigrationModule, migrationVersion, migrations } from './migrations/index.ts';

const names = Object.keys(migrations);
const image0 = { id: 'i1', name: 'img', format: 'raw' as const, path: '/p', kernel_path: null, initrd_path: null, cmdline: null, ready_text: null, size_mib: 1, os: null, created_at: '2026-01-01' };
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function freshUrl(engine: 'sqlite' | 'postgres'): Promise<string> {
  if (engine === 'postgres') {
    const p = await freshPostgres();
    cleanups.push(p.drop);
    return p.url;
  }
  const dir = mkdtempSync(join(tmpdir(), 'awan-migrate-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  return `sqlite:${join(dir, 'awan.db')}`;
}

async function applied(db: Kysely<any>): Promise<string[]> {
  return (await db.selectFrom(MIGRATION_TABLE).select('name').orderBy('name').execute()).map((r: { name: string }) => r.name);
}

async function hasTable(db: Kysely<any>, engine: 'sqlite' | 'postgres', table: string): Promise<boolean> {
  const row =
    engine === 'postgres'
      ? (await sql<{ t: string | null }>`select to_regclass(${table})::text as t`.execute(db)).rows[0]?.t
      : (await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name = ${table}`.execute(db)).rows[0];
  return Boolean(row);
}

/** A migration made in the test: it notes each run in `migration_runs`, so running twice shows. */
const counting = (name: string): (() => Promise<MigrationModule>) => async () => ({
  async up(db) {
    await db.schema.createTable('migration_runs').ifNotExists().addColumn('name', 'text', (c) => c.notNull()).execute();
    await db.insertInto('migration_runs').values({ name }).execute();
  },
});

describe('the migrations index', () => {
  it('names each migration NNN_words after a file that exists, with numbers used once', () => {
    const dir = join(dirname(fileURLToPath(import.meta.url)), 'migrations');
    const versions = names.map(migrationVersion);
    assert.equal(new Set(versions).size, versions.length);
    for (const n of names) assert.ok(existsSync(join(dir, `${n}.ts`)), `migrations/${n}.ts exists`);
    assert.throws(() => migrationVersion('8_no_padding'), /NNN_lower_case_words/);
  });
});

for (const engine of ['sqlite', 'postgres'] as const) {
  describe(`migrations on ${engine}`, () => {
    it('migrate a fresh database: every migration recorded once in kysely_migration, no old table made', async () => {
      const url = await freshUrl(engine);
      const store = await openStore(url);
      try {
        assert.deepEqual(await applied(store.db), [...names].sort());
        assert.equal(await hasTable(store.db, engine, 'awan_migrations'), false);
        // The last migrations' columns are there.
        await store.db.insertInto('images').values({ ...image0, ready_text: 'ok', imported: 1 }).execute();
        const image = await store.db.selectFrom('images').select(['ready_text', 'imported']).executeTakeFirstOrThrow();
        assert.deepEqual(image, { ready_text: 'ok', imported: 1 });
        const again = await openStore(url);
        assert.deepEqual(await applied(again.db), [...names].sort());
        await again.close();
      } finally {
        await store.close();
      }
    });

    it('adopt a database the old runner made: its migrations are recorded once and not run again, its data stays', async () => {
      const url = await freshUrl(engine);
      const { db } = await legacyDatabase(url, 7);
      await db.insertInto('users').values({ id: 'u1', username: 'old', password_hash: 'x', role: 'admin', created_at: '2026-01-01' }).execute();
      await db.destroy();

      const store = await openStore(url);
      try {
        assert.deepEqual(await applied(store.db), [...names].sort());
        assert.deepEqual(await store.db.selectFrom('users').select('username').execute(), [{ username: 'old' }]);
        // The old table is left as it was…
        const old = await store.db.selectFrom('awan_migrations' as never).select('version' as never).execute();
        assert.equal(old.length, 7);
        // …and never read again: without it the store still opens and applies nothing.
        await store.db.schema.dropTable('awan_migrations').execute();
      } finally {
        await store.close();
      }
      const reopened = await openStore(url);
      assert.deepEqual(await reopened.db.selectFrom('users').select('username').execute(), [{ username: 'old' }]);
      assert.deepEqual(await applied(reopened.db), [...names].sort());
      await reopened.close();
    });

    it('upgrade an old-runner database part way: the migrations it lacks run, the others are only recorded', async () => {
      const url = await freshUrl(engine);
      const { db } = await legacyDatabase(url, 2);
      const { ready_text: _, ...before003 } = image0;
      await db.insertInto('images').values(before003).execute();
      await db.destroy();
      const store = await openStore(url);
      try {
        assert.deepEqual(await applied(store.db), [...names].sort());
        // 003 and 007 ran: their columns exist, with 007's default on the row that was there.
        const image = await store.db.selectFrom('images').select(['name', 'ready_text', 'imported']).executeTakeFirstOrThrow();
        assert.deepEqual(image, { name: 'img', ready_text: null, imported: 0 });
      } finally {
        await store.close();
      }
    });

    it('run migrations merged out of number order once each', async () => {
      const url = await freshUrl(engine);
      const later = { ...migrations, '901_lower_number': counting('901'), '902_another': counting('902'), '903_later_number': counting('903') };
      await (await openStore(url, { migrations: { ...migrations, '903_later_number': counting('903') } })).close();
      // 901 and 902 land after 903 was applied here (numbers are handed out before the work is merged).
      await (await openStore(url, { migrations: later })).close();
      const store = await openStore(url, { migrations: later });
      try {
        const runs = (await sql<{ name: string }>`select name from migration_runs`.execute(store.db)).rows.map((r) => r.name);
        assert.deepEqual(runs, ['903', '901', '902']);
        assert.deepEqual(await applied(store.db), [...names, '901_lower_number', '902_another', '903_later_number'].sort());
      } finally {
        await store.close();
      }
    });

    it('refuse two migrations with one number, naming both', async () => {
      const url = await freshUrl(engine);
      await assert.rejects(openStore(url, { migrations: { ...migrations, '901_one': counting('a'), '901_two': counting('b') } }), /901_one and 901_two share the number 901/);
    });

    it('leave the database as it was when a migration fails, and say which one', async () => {
      const url = await freshUrl(engine);
      const broken = async (): Promise<MigrationModule> => ({
        async up(trx) {
          await trx.schema.createTable('half_done').addColumn('id', 'text').execute();
          await trx.schema.alterTable('vms').addColumn('half_column', 'text').execute();
          throw new Error('disk on fire');
        },
      });
      await (await openStore(url)).close();
      await assert.rejects(openStore(url, { migrations: { ...migrations, '901_works': counting('901'), '902_broken': broken } }), /migration 902_broken failed: disk on fire/);
      const store = await openStore(url);
      try {
        assert.equal(await hasTable(store.db, engine, 'half_done'), false);
        assert.equal(await hasTable(store.db, engine, 'migration_runs'), false, 'the migration before it in the same run is undone too');
        assert.deepEqual(await applied(store.db), [...names].sort());
        await assert.rejects(store.db.selectFrom('vms').select('half_column' as never).execute(), /half_column/);
      } finally {
        await store.close();
      }
    });
  });
}

describe('migrations on PostgreSQL replicas', () => {
  it('two stores opened at once on one schema both open, and each migration runs once', async () => {
    const url = await freshUrl('postgres');
    const [a, b] = await Promise.all([openStore(url), openStore(url)]);
    try {
      assert.deepEqual(await applied(a.db), [...names].sort());
      assert.deepEqual(await applied(b.db), [...names].sort());
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('four replicas migrating at once run a new migration once', async () => {
    const url = await freshUrl('postgres');
    const list = { ...migrations, '901_counted': counting('901') };
    const stores = await Promise.all(Array.from({ length: 4 }, () => openStore(url, { migrations: list })));
    try {
      const runs = await stores[0].db.selectFrom('migration_runs' as never).select('name' as never).execute();
      assert.deepEqual(runs, [{ name: '901' }]);
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('waits for the migration lock another replica holds', async () => {
    const base = await freshUrl('postgres');
    const appName = `awan-lock-test-${process.pid}`;
    const url = `${base}&application_name=${appName}`;
    // Kysely's PostgreSQL adapter takes this session advisory lock while it migrates.
    const LOCK_ID = '3853314791062309107';
    const holder = new pg.Client({ connectionString: base });
    await holder.connect();
    try {
      await holder.query(`select pg_advisory_lock(${LOCK_ID})`);
      let opened = false;
      const opening = openStore(url).then((s) => {
        opened = true;
        return s;
      });
      const waiting = async () =>
        Number(
          (
            await holder.query(
              `select count(*) as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
               where l.locktype = 'advisory' and not l.granted and a.application_name = $1`,
              [appName],
            )
          ).rows[0].n,
        ) > 0;
      await until(waiting, { timeoutMs: 20_000 });
      assert.equal(opened, false, 'the store does not open while another holds the migration lock');
      await holder.query(`select pg_advisory_unlock(${LOCK_ID})`);
      const store = await opening;
      assert.deepEqual(await applied(store.db), [...names].sort());
      await store.close();
    } finally {
      await holder.end();
    }
  });

  it('parses int8 as a number on the store pool only; another pg client in the process gets strings', async () => {
    const url = await freshUrl('postgres');
    const store = await openStore(url);
    const client = new pg.Client({ connectionString: url });
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    await client.connect();
    try {
      const ours = await sql<{ n: unknown; big: unknown }>`select 42::int8 as n, count(*) as big from (values (1), (2)) v(x)`.execute(store.db);
      assert.deepEqual(ours.rows[0], { n: 42, big: 2 });
      assert.deepEqual((await client.query('select 42::int8 as n')).rows[0], { n: '42' });
      assert.deepEqual((await pool.query('select 42::int8 as n')).rows[0], { n: '42' });
      assert.equal(pg.types.getTypeParser(20, 'text')('7'), '7');
    } finally {
      await client.end();
      await pool.end();
      await store.close();
    }
  });
});
