// A database as earlier releases left it: their hand-written migration runner (copied verbatim from
// src/control/store/db.ts at commit aa26bd9) applying the migrations they knew, recorded by number in
// `awan_migrations`. Upgrade tests start from here.
import SQLite from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { migrations as index } from '../../src/control/store/migrations/index.ts';

type Dialect = 'sqlite' | 'postgres';

interface Migration {
  version: number;
  name: string;
  up(db: Kysely<any>, dialect: Dialect): Promise<void>;
}

/** The list those releases shipped (versions 1 to 7), running today's files: released migrations do not change. */
const legacyNames = ['initial', 'host_credential_index', 'image_ready_text', 'vm_local_disk', 'unique_names_and_active_tasks', 'token_expiry', 'image_imported'];
async function legacyMigrations(): Promise<Migration[]> {
  return Promise.all(
    legacyNames.map(async (name, i) => {
      const version = i + 1;
      const mod = await index[`${String(version).padStart(3, '0')}_${name}`]();
      return { version, name, up: mod.up };
    }),
  );
}

/** Opens `url` without migrating, the way the old store connected (plain dialects). */
export function rawDatabase(url: string): { db: Kysely<any>; dialect: Dialect } {
  if (/^postgres(ql)?:\/\//.test(url)) return { db: new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 2 }) }) }), dialect: 'postgres' };
  return { db: new Kysely<any>({ dialect: new SqliteDialect({ database: new SQLite(url.replace(/^sqlite:/, '')) }) }), dialect: 'sqlite' };
}

/** Builds the schema the old runner made, up to and including `upTo`; returns the open database. */
export async function legacyDatabase(url: string, upTo = 7): Promise<{ db: Kysely<any>; dialect: Dialect }> {
  const { db, dialect } = rawDatabase(url);
  await oldMigrate(db, dialect, (await legacyMigrations()).filter((m) => m.version <= upTo));
  return { db, dialect };
}

// ---- the old runner, as it was ----
async function oldMigrate(db: Kysely<any>, dialect: Dialect, migrations: Migration[]): Promise<void> {
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
