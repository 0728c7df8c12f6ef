// Opens the database named by a URL (sqlite:PATH or postgres://…) and brings its schema up to date with
// Kysely's Migrator, which holds a lock while it migrates (an advisory lock on PostgreSQL), so several
// replicas starting together on one database apply each migration once.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, type Migration, type MigrationProvider, Migrator, PostgresDialect, SqliteAdapter, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { type Dialect, LAST_LEGACY_VERSION, type MigrationModule, migrationVersion, migrations } from './migrations/index.ts';
import type { Database } from './schema.ts';

export type { Dialect } from './migrations/index.ts';

/** Where Kysely records the migrations it applied: the truth about the schema's version. */
export const MIGRATION_TABLE = 'kysely_migration';
/** Where the runner of earlier releases recorded them (read once, when adopting such a database). */
export const LEGACY_MIGRATION_TABLE = 'awan_migrations';

export interface Store {
  db: Kysely<Database>;
  dialect: Dialect;
  close(): Promise<void>;
}

// int8 (counts, bigserial) arrives as a string by default; our numbers stay far below 2^53. Set on our
// pool only, so other pg clients in the process keep pg's defaults.
const int8AsNumber = (v: string) => Number(v);
const pgTypes: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8 && format !== 'binary' ? int8AsNumber : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

export interface OpenStoreOptions {
  /** The migrations to bring the schema to: the index (./migrations/index.ts) unless a test gives its own. */
  migrations?: Record<string, () => Promise<MigrationModule>>;
}

export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<Store> {
  const dialect: Dialect = /^postgres(ql)?:\/\//.test(url) ? 'postgres' : 'sqlite';
  let db: Kysely<Database>;
  if (dialect === 'postgres') {
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 10, types: pgTypes }) }) });
  } else {
    const path = url.replace(/^sqlite:/, '');
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    const sqlite = new SQLite(path);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('busy_timeout = 5000');
    db = new Kysely<Database>({ dialect: new TransactionalDdlSqliteDialect({ database: withStatementCache(sqlite) }) });
  }
  try {
    await migrate(db, dialect, options.migrations ?? migrations);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return { db, dialect, close: () => db.destroy() };
}

/**
 * SQLite runs DDL inside transactions; Kysely's adapter says otherwise only to be safe for every build.
 * Saying so here lets the Migrator apply all pending migrations in one transaction on both engines, so a
 * failed upgrade leaves the database as it was.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}
class TransactionalDdlSqliteDialect extends SqliteDialect {
  override createAdapter() {
    return new TransactionalDdlSqliteAdapter();
  }
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

/** Applies every migration not yet recorded in `kysely_migration`, under Kysely's lock and in one transaction. */
async function migrate(db: Kysely<any>, dialect: Dialect, list: Record<string, () => Promise<MigrationModule>>): Promise<void> {
  // Kysely looks for its tables in every schema unless told which; on PostgreSQL that is ours (the first
  // of search_path), so databases that keep several awan schemas side by side each get their own.
  const schema = dialect === 'postgres' ? await currentSchema(db) : undefined;
  const migrator = new Migrator({
    db,
    provider: migrationProvider(dialect, list),
    migrationTableName: MIGRATION_TABLE,
    migrationTableSchema: schema,
    allowUnorderedMigrations: true,
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    const why = error instanceof Error ? error.message : String(error);
    throw new Error(failed ? `migration ${failed} failed: ${why}` : `migrating the database failed: ${why}`, { cause: error });
  }
}

async function currentSchema(db: Kysely<any>): Promise<string> {
  const { rows } = await sql<{ schema: string | null }>`select current_schema() as schema`.execute(db);
  const schema = rows[0]?.schema;
  if (!schema) throw new Error('the PostgreSQL search_path names no schema that exists; create it or fix the URL');
  return schema;
}

function migrationProvider(dialect: Dialect, list: Record<string, () => Promise<MigrationModule>>): MigrationProvider {
  return {
    async getMigrations() {
      const byVersion = new Map<number, string>();
      const out: Record<string, Migration> = {};
      // What the old runner recorded, read once per run and only while one of its migrations is pending.
      let legacy: Promise<Set<number>> | undefined;
      for (const [name, load] of Object.entries(list)) {
        const version = migrationVersion(name);
        const clash = byVersion.get(version);
        if (clash) throw new Error(`migrations ${clash} and ${name} share the number ${version}; give one the next free number`);
        byVersion.set(version, name);
        out[name] = {
          async up(trx) {
            if (version <= LAST_LEGACY_VERSION && (await (legacy ??= legacyApplied(trx, dialect))).has(version)) return;
            await (await load()).up(trx, dialect);
          },
        };
      }
      return out;
    },
  };
}

/**
 * The one-way bridge from earlier releases: their runner recorded applied migrations by number in
 * `awan_migrations`. A migration it applied is recorded in `kysely_migration` without running again;
 * once all of them are recorded this table is never read, and it is left as it was.
 */
async function legacyApplied(db: Kysely<any>, dialect: Dialect): Promise<Set<number>> {
  const exists =
    dialect === 'postgres'
      ? (await sql<{ t: string | null }>`select to_regclass(${LEGACY_MIGRATION_TABLE})::text as t`.execute(db)).rows[0]?.t
      : (await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name = ${LEGACY_MIGRATION_TABLE}`.execute(db)).rows[0];
  if (!exists) return new Set();
  const rows = await db.selectFrom(LEGACY_MIGRATION_TABLE).select('version').execute();
  return new Set(rows.map((r: { version: number | string }) => Number(r.version)));
}
