// An in-process datacenter for tests: Cloud Control on a loopback port and N Node Control agents with
// simulated servers, talking over real HTTP and WebSockets.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../src/agent/agent.ts';
import { type MemoryStorage, createFileStorage, createMemoryStorage } from '../../src/agent/storage/index.ts';
import { type Control, type ControlConfig, createControl } from '../../src/control/app.ts';
import { createSimDriver, type SimDriver, type SimDriverOptions } from '../../src/drivers/sim/index.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { until } from '../until.ts';
import { apiRequest } from './http.ts';

export const TEST_SCRYPT_COST = { N: 2 ** 10, r: 8, p: 1 };

export interface TestHost<D extends HypervisorDriver = SimDriver> {
  name: string;
  driver: D;
  agent: Agent;
  dataDir: string;
  /** The control URL its agent dials when not control's own. */
  via?: string;
}

export interface Cluster<D extends HypervisorDriver = SimDriver> {
  control: Control;
  url: string;
  token: string;
  hosts: TestHost<D>[];
  dir: string;
  /** The simulated hosts' pools (one shared pool seen by all, a local one each). */
  memory: MemoryStorage;
  api<T = any>(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }>;
  /** A host whose agent dials `control` (a link a test can cut) and nothing else. */
  addHost(name: string, sim?: Partial<SimDriverOptions>, control?: string): Promise<TestHost<D>>;
  stopAgent(host: TestHost<D>): Promise<void>;
  startAgent(host: TestHost<D>): Promise<void>;
  waitTask(id: string, timeoutMs?: number): Promise<any>;
  /** Closes control and opens a new one on the same database and port (the database must be a file). */
  restartControl(): Promise<void>;
  close(): Promise<void>;
}

export interface ClusterOptions<D extends HypervisorDriver> {
  hosts?: number;
  sim?: Partial<SimDriverOptions>;
  control?: Partial<ControlConfig>;
  db?: string;
  /** Another driver than the simulator (QEMU): made per host with its own data directory. */
  makeDriver?: (name: string, dataDir: string) => Promise<D>;
  /** Simulated hosts keep their pools in real directories (as QEMU hosts do) instead of in memory. */
  fileStorage?: boolean;
}

export async function startCluster<D extends HypervisorDriver = SimDriver>(opts: ClusterOptions<D> = {}): Promise<Cluster<D>> {
  const dir = mkdtempSync(join(tmpdir(), 'awan-test-'));
  const log = createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent');
  // Tests make their image files in the cluster's own directory; more image directories come from opts.control.
  const imageDirs = [dir, ...(opts.control?.imageDirs ?? [])];
  // Tests that are not about password hashing use a cheap scrypt: the default costs half a second a login.
  const config = { db: opts.db ?? 'sqlite::memory:', adminPassword: 'admin-password', heartbeatIntervalMs: 200, log, poolDir: join(dir, 'pool'), ...opts.control, imageDirs, auth: { scryptCost: TEST_SCRYPT_COST, ...opts.control?.auth } };
  const open = async (port: number) => {
    const control = await createControl(config);
    await control.start();
    await control.app.listen({ port, host: '127.0.0.1' });
    return control;
  };
  const control = await open(0);
  const address = control.app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const url = `http://127.0.0.1:${port}`;

  const api = <T>(method: string, path: string, body?: unknown, token?: string) => apiRequest<T>(url, token ?? cluster.token, method, path, body);

  const memory = createMemoryStorage();
  const storageFor = (dataDir: string) => (opts.makeDriver ? {} : { storage: opts.fileStorage ? createFileStorage(dataDir) : memory.forHost(dataDir) });
  const login = await api<{ token: string }>('POST', '/api/v1/auth/login', { username: 'admin', password: 'admin-password' }, '');
  const cluster: Cluster<D> = {
    control, url, token: login.body.token, hosts: [], dir, api, memory,
    async addHost(name, sim, via) {
      const { body } = await api<{ token: string }>('POST', '/api/v1/hosts/join-tokens');
      const dataDir = join(dir, name);
      const driver = opts.makeDriver
        ? await opts.makeDriver(name, dataDir)
        : (createSimDriver({ hostname: name, address: name, cpus: 8, memoryMiB: 16384, bootDelayMs: 20, migrateMiBPerS: 8192, ...opts.sim, ...sim }) as HypervisorDriver as D);
      const agent = new Agent({ control: via ?? url, pinned: via !== undefined, joinToken: body.token, driver, dataDir, name, log, ...storageFor(dataDir) });
      await agent.start();
      const host = { name, driver, agent, dataDir, via };
      cluster.hosts.push(host);
      await until(async () => (await api<{ items: { name: string; state: string }[] }>('GET', '/api/v1/hosts')).body.items.find((h) => h.name === name)?.state === 'ready', { what: `${name} ready` });
      return host;
    },
    async stopAgent(host) {
      await host.agent.stop();
    },
    async startAgent(host) {
      host.agent = new Agent({ control: host.via ?? url, pinned: host.via !== undefined, driver: host.driver, dataDir: host.dataDir, name: host.name, log, ...storageFor(host.dataDir) });
      await host.agent.start();
    },
    async waitTask(id, timeoutMs = 15_000) {
      return until(async () => {
        const t = (await api<{ state: string }>('GET', `/api/v1/tasks/${id}`)).body;
        return ['succeeded', 'failed', 'cancelled'].includes(t.state) ? t : undefined;
      }, { timeoutMs, what: `task ${id}` });
    },
    async restartControl() {
      if (config.db.includes(':memory:')) throw new Error('restartControl needs a database file (opts.db)');
      await cluster.control.close();
      cluster.control = await open(port);
    },
    async close() {
      for (const h of cluster.hosts) {
        await h.agent.stop();
        await h.driver.close();
      }
      await cluster.control.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let i = 1; i <= (opts.hosts ?? 0); i++) await cluster.addHost(`host-${i}`);
  return cluster;
}
