// control.leader_failover: two `awan serve` replicas on one PostgreSQL schema and a fleet of sim agents in
// this process; the leader is killed with SIGKILL, several times in turn (the killed one comes back as a
// follower). Reports the time from the kill until the other replica leads, and until every agent is
// connected to it again, with the default lease timings.
import { freePort } from '../test/support/processes.ts';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import { Agent } from '../src/agent/agent.ts';
import { LEADER_DEFAULTS } from '../src/control/leader/elector.ts';
import { createSimDriver, type SimDriver } from '../src/drivers/sim/index.ts';
import { createLogger } from '../src/lib/logger.ts';
import { quantile, report } from './support/report.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { waitFor } from './support/wait.ts';

const AGENTS = 20;
const ROUNDS = 3;
const PASSWORD = 'bench-admin-password';
const repo = join(import.meta.dirname, '..');
const base = process.env.AWAN_BENCH_PG ?? process.env.AWAN_TEST_PG ?? 'postgres://root@/awan_test?host=/var/run/postgresql';


async function withAdmin<T>(f: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: base });
  await c.connect();
  try {
    return await f(c);
  } finally {
    await c.end();
  }
}

export async function leaderFailover(): Promise<void> {
  const dir = makeTempDir('failover');
  const schema = `bench_failover_${process.pid}`;
  await withAdmin((c) => c.query(`create schema ${schema}`));
  const db = `${base}${base.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c search_path=${schema}`)}`;
  const ports = [await freePort(), await freePort()];
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  const procs: (ChildProcess | undefined)[] = [undefined, undefined];
  const agents: { agent: Agent; driver: SimDriver }[] = [];
  const serve = async (i: number) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve', '--port', String(ports[i]), '--db', db, '--pool-dir', join(dir, 'pool'), '--advertise-url', urls[i]], {
      cwd: repo, env: { ...process.env, AWAN_ADMIN_PASSWORD: PASSWORD, AWAN_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'],
    });
    procs[i] = child;
    await waitFor(async () => (await fetch(`${urls[i]}/healthz`).catch(() => undefined))?.ok === true, `replica ${i + 1} up`, 30_000);
  };
  const login = async (url: string) => {
    const res = await fetch(`${url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
    return ((await res.json()) as { token: string }).token;
  };
  const leads = async (url: string, token: string) => {
    const res = await fetch(`${url}/api/v1/replicas`, { headers: { authorization: `Bearer ${token}` } }).catch(() => undefined);
    return res?.ok ? ((await res.json()) as { self: { leader: boolean; epoch: number } }).self : undefined;
  };
  try {
    await serve(0);
    await serve(1);
    const tokens = [await login(urls[0]), await login(urls[1])];
    let leader = (await leads(urls[0], tokens[0]))?.leader ? 0 : 1;
    await waitFor(async () => (await leads(urls[leader], tokens[leader]))?.leader === true, 'a leader', 10_000);
    for (let i = 0; i < AGENTS; i++) {
      const res = await fetch(`${urls[leader]}/api/v1/hosts/join-tokens`, { method: 'POST', headers: { authorization: `Bearer ${tokens[leader]}` } });
      const { token } = (await res.json()) as { token: string };
      const name = `fo-host-${i + 1}`;
      const driver = createSimDriver({ hostname: name, address: name, memoryMiB: 16_384, bootDelayMs: 20 });
      // Half the agents were given one replica's URL, half the other's.
      const agent = new Agent({ control: urls[i % 2], joinToken: token, driver, dataDir: join(dir, name), name, log: createLogger(name, 'silent') });
      await agent.start();
      agents.push({ agent, driver });
    }
    const onLeader = (i: number, epoch?: number) => agents.every((a) => a.agent.connected && a.agent.dialled === urls[i] && (epoch === undefined || a.agent.epoch === epoch));
    await waitFor(() => onLeader(leader), 'agents connected to the leader', 30_000);

    const toLead: number[] = [];
    const toAgents: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const other = 1 - leader;
      const killed = procs[leader]!;
      const t0 = performance.now();
      killed.kill('SIGKILL');
      let epoch = 0;
      await waitFor(async () => {
        const self = await leads(urls[other], tokens[other]);
        epoch = self?.epoch ?? 0;
        return self?.leader === true;
      }, 'the other replica leading', 30_000, 20);
      toLead.push((performance.now() - t0) / 1000);
      await waitFor(() => onLeader(other, epoch), 'agents on the new leader', 30_000, 20);
      toAgents.push((performance.now() - t0) / 1000);
      await new Promise((r) => (killed.exitCode === null && killed.signalCode === null ? killed.once('exit', r) : r(undefined)));
      // The killed replica comes back and follows; the next round kills the one that leads now.
      await serve(leader);
      tokens[leader] = await login(urls[leader]);
      leader = other;
    }
    const params = { agents: AGENTS, rounds: ROUNDS, leaseMs: LEADER_DEFAULTS.leaseMs, renewMs: LEADER_DEFAULTS.renewMs, retryMs: LEADER_DEFAULTS.retryMs };
    const round2 = (v: number) => Math.round(v * 100) / 100;
    report('control.leader_failover', quantile(toLead, 0.5), 's', { until: 'another replica leads', max: round2(Math.max(...toLead)), ...params });
    report('control.leader_failover', quantile(toAgents, 0.5), 's', { until: 'every agent reconnected to it', max: round2(Math.max(...toAgents)), ...params });
  } finally {
    for (const a of agents) {
      await a.agent.stop().catch(() => undefined);
      await a.driver.close().catch(() => undefined);
    }
    for (const p of procs) if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    }
    await withAdmin((c) => c.query(`drop schema if exists ${schema} cascade`)).catch((err: unknown) => console.error('could not drop', schema, err));
    removeTempDir(dir);
  }
}
