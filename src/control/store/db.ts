// Opens the database named by a URL (sqlite:PATH or postgres://…) and brings its schema up to date.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { migrations } from './migrations/index.ts';
import type { Database } from './schema.ts';

export type Dialect = 'sqlite' | 'postgres';

export interface Store {
  db: Kysely<Database>;
  dialect: Dialect;
  close(): Promise<void>;
}

// int8 (counts, bigserial) arrives as a string by default; our numbers stay far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

export async function openStore(url: string): Promise<Store> {
  const dialect: Dialect = /^postgres(ql)?:\/\//.test(url) ? 'postgres' : 'sqlite';
  let db: Kysely<Database>;
  if (dialect === 'postgres') {
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 10 }) }) });
  } else {
    const path = url.replace(/^sqlite:/, '');
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    const sqlite = new SQLite(path);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('busy_timeout = 5000');
    db = new Kysely<Database>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
  }
  await migrate(db, dialect);
  return { db, dialect, close: () => db.destroy() };
}

/**
 * Kysely prepares every query anew; compiling SQL is a large share of a request's CPU on SQLite. The same
 * few hundred statements repeat, so keep them prepared. Safe because better-sqlite3 runs one statement at
 * a time and nothing here streams rows.
 */
function withStatementCache(sqlite: SQLite.Database, max = 500) {
  const cache = new Map<string, SQLite.Statement>();
  return {
    close: () => sqlite.close(),
    prepare(sql: string) {
      let stmt = cache.get(sql);
      if (!stmt) {
        stmt = sqlite.prepare(sql);
        if (cache.size >= max) cache.delete(cache.keys().next().value!);
        cache.set(sql, stmt);
      }
      return stmt;
    },
  };
}

async function migrate(db: Kysely<Database>, dialect: Dialect): Promise<void> {
  const raw = db as unknown as Kysely<any>;
  await raw.schema
    .createTable('awan_migrations')
    .ifNotExists()
    .addColumn('version', 'integer', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('applied_at', 'text', (c) => c.notNull())
    .execute();
  const applied = new Set(
    (await raw.selectFrom('awan_migrations').select('version').execute()).map((r: { version: number }) => r.version),
  );
  for (const m of migrations) {
    if (applied.has(m.version)) continue;
    await raw.transaction().execute(async (trx) => {
      if (dialect === 'postgres') await sql`select pg_advisory_xact_lock(8211)`.execute(trx);
      const again = await trx.selectFrom('awan_migrations').select('version').where('version', '=', m.version).executeTakeFirst();
      if (again) return; // another replica migrated meanwhile
      await m.up(trx, dialect);
      await trx.insertInto('awan_migrations').values({ version: m.version, name: m.name, applied_at: new Date().toISOString() }).execute();
    });
  }
}
