// A Cloud Control for benchmarks: SQLite in a temporary file (the real default) unless `config.db` names another, on 127.0.0.1, with an admin session.
import { join } from 'node:path';
import { type Control, type ControlConfig, createControl } from '../../src/control/app.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export interface BenchControl {
  control: Control;
  url: string;
  dir: string;
  adminId: string;
  /** A bearer token of the admin. */
  token: string;
  /** Hosts that are ready and connected right now. */
  readyHosts(): number;
  close(): Promise<void>;
}

const PASSWORD = 'bench-admin-password';

export async function startBenchControl(name: string, config: Partial<ControlConfig> = {}): Promise<BenchControl> {
  const dir = makeTempDir(name);
  let control: Control | undefined;
  try {
    const log = createLogger(`bench:${name}`, process.env.AWAN_BENCH_LOG ?? 'silent');
    control = await createControl({ db: `sqlite:${join(dir, 'awan.db')}`, adminPassword: PASSWORD, log, poolDir: join(dir, 'pool'), ...config });
    await control.start();
    await control.app.listen({ port: 0, host: '127.0.0.1' });
    const address = control.app.server.address();
    if (!address || typeof address === 'string') throw new Error('control has no TCP address');
    const login = await control.auth.login('admin', PASSWORD);
    const c = control;
    return {
      control: c,
      url: `http://127.0.0.1:${address.port}`,
      dir,
      adminId: login.user.id,
      token: login.token,
      readyHosts: () => c.registry.all().filter((h) => h.connection && h.row.state === 'ready').length,
      async close() {
        await c.close();
        removeTempDir(dir);
      },
    };
  } catch (err) {
    await control?.close().catch(() => undefined);
    removeTempDir(dir);
    throw err;
  }
}
