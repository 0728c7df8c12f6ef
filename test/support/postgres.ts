// A throwaway PostgreSQL schema per test file, so store tests run against the real engine in CI.
import pg from 'pg';

const base = process.env.AWAN_TEST_PG ?? 'postgres://root@/awan_test?host=/var/run/postgresql';

export async function freshPostgres(): Promise<{ url: string; drop: () => Promise<void> }> {
  const schema = `t_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  const admin = new pg.Client({ connectionString: base });
  try {
    await admin.connect();
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${base} (${(err as Error).message}). Install and start it: ` +
        `apt-get install postgresql && pg_ctlcluster 15 main start && su postgres -c 'createuser --superuser root && createdb -O root awan_test' — or set AWAN_TEST_PG`,
    );
  }
  await admin.query(`create schema ${schema}`);
  await admin.end();
  const sep = base.includes('?') ? '&' : '?';
  return {
    url: `${base}${sep}options=${encodeURIComponent(`-c search_path=${schema}`)}`,
    async drop() {
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      await c.query(`drop schema ${schema} cascade`);
      await c.end();
    },
  };
}
