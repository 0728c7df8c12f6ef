// kill -9 of the leading `awan serve` of two on one PostgreSQL: the other replica leads, the agents (one
// given each replica's URL) follow it, no VM is restarted, stopped or lost, and a VM that was booting when
// the leader died reaches running. Control runs as child processes; the agents run in this process, so the
// test sees each simulated VM's uptime and every state change the hosts went through.
import { freePort } from '../support/processes.ts';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent } from '../../src/agent/agent.ts';
import { createSimDriver, type SimDriver } from '../../src/drivers/sim/index.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { freshPostgres } from '../support/postgres.ts';
import { until } from '../until.ts';

const repo = join(import.meta.dirname, '..', '..');


describe('leader replica killed with SIGKILL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-failover-'));
  let pg: Awaited<ReturnType<typeof freshPostgres>> | undefined;
  const children: ChildProcess[] = [];
  const agents: { name: string; agent: Agent; driver: SimDriver; changes: { id: string; state: string }[] }[] = [];
  before(async () => {
    pg = await freshPostgres();
  });
  after(async () => {
    for (const a of agents) {
      await a.agent.stop().catch(() => undefined);
      await a.driver.close().catch(() => undefined);
    }
    for (const ch of children) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL');
    await Promise.all(children.map((ch) => (ch.exitCode === null && ch.signalCode === null ? new Promise((r) => ch.once('exit', r)) : undefined)));
    await pg?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('leads from the other replica; agents follow; VMs keep running; a booting VM reaches running', async () => {
    const ports = [await freePort(), await freePort()];
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const serve = (i: number) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve', '--port', String(ports[i]), '--db', pg!.url, '--pool-dir', join(dir, 'pool'), '--advertise-url', urls[i], '--host-lease-ms', '2000'], {
        cwd: repo,
        env: { ...process.env, AWAN_ADMIN_PASSWORD: 'admin-password', AWAN_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      children.push(child);
      return child;
    };
    const api = async (base: string, method: string, path: string, token: string, body?: unknown) => {
      const res = await fetch(base + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
      return { status: res.status, body: (await res.json()) as any };
    };
    const login = async (base: string) => {
      const res = await fetch(`${base}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: 'admin-password' }) });
      return ((await res.json()) as { token: string }).token;
    };

    // One after the other, so the first one creates the admin user.
    const procs = [serve(0)];
    await until(async () => (await fetch(`${urls[0]}/healthz`)).ok, { timeoutMs: 30_000, what: 'first replica up' });
    procs.push(serve(1));
    await until(async () => (await fetch(`${urls[1]}/healthz`)).ok, { timeoutMs: 30_000, what: 'second replica up' });
    const tokens = [await login(urls[0]), await login(urls[1])];
    const view = await until(async () => {
      const r = (await api(urls[1], 'GET', '/api/v1/replicas', tokens[1])).body;
      return r.items?.length === 2 && r.leader ? r : undefined;
    }, { what: 'two replicas, one leading' });
    const lead = urls.indexOf(view.leader.url);
    assert.ok(lead >= 0, `the leader is one of ours: ${JSON.stringify(view)}`);
    const other = 1 - lead;
    const leaderSelf = (await api(urls[lead], 'GET', '/api/v1/replicas', tokens[lead])).body.self;
    assert.equal(leaderSelf.leader, true);
    assert.equal((await api(urls[other], 'GET', '/api/v1/replicas', tokens[other])).body.self.leader, false, 'exactly one leads');

    // h1 knows only the leader's URL, h2 only the other replica's.
    for (const [name, start] of [['h1', urls[lead]], ['h2', urls[other]]] as const) {
      const { body } = await api(urls[lead], 'POST', '/api/v1/hosts/join-tokens', tokens[lead]);
      // Slow boots, so that a VM is still booting when the leader dies.
      const driver = createSimDriver({ hostname: name, address: name, memoryMiB: 8192, bootDelayMs: 1500 });
      const changes: { id: string; state: string }[] = [];
      driver.subscribe((e) => { if (e.type === 'vm-state') changes.push({ id: e.vm.id, state: e.vm.state }); });
      const agent = new Agent({ control: start, joinToken: body.token, driver, dataDir: join(dir, name), name, log: createLogger(name, 'silent'), maxBackoffMs: 1000 });
      await agent.start();
      agents.push({ name, agent, driver, changes });
    }
    await until(async () => (await api(urls[lead], 'GET', '/api/v1/hosts', tokens[lead])).body.items.filter((h: any) => h.state === 'ready').length === 2, { what: 'hosts ready' });
    for (const a of agents) assert.equal(a.agent.dialled, urls[lead], `${a.name} talks to the leader`);
    await until(() => agents.every((a) => a.agent.controls.length === 2), { what: 'agents know both replicas' });

    const settled = [];
    // HA VMs, whose hosts would stop them if their 2 s leases ran out while no replica leads.
    for (const name of ['s1', 's2', 's3']) settled.push((await api(urls[lead], 'POST', '/api/v1/vms', tokens[lead], { name, cpus: 1, memoryMiB: 512, ha: true })).body);
    for (const s of settled) {
      await until(async () => (await api(urls[lead], 'GET', `/api/v1/tasks/${s.task.id}`, tokens[lead])).body.state === 'succeeded', { timeoutMs: 20_000, what: `VM ${s.vm.name}` });
    }
    /** Every VM each host runs, with the moment it booted (now minus its uptime). */
    const running = async () => {
      const all = new Map<string, { host: string; bootedAtS: number }>();
      for (const a of agents) {
        for (const v of await a.driver.list()) {
          if (v.state !== 'running') continue;
          assert.ok(!all.has(v.id), `VM ${v.id} runs on one host only`);
          all.set(v.id, { host: a.name, bootedAtS: Date.now() / 1000 - (v.uptimeS ?? 0) });
        }
      }
      return all;
    };
    const before = await running();
    assert.equal(before.size, 3);

    const late = (await api(urls[lead], 'POST', '/api/v1/vms', tokens[lead], { name: 'late', cpus: 1, memoryMiB: 512 })).body;
    await until(async () => (await api(urls[lead], 'GET', `/api/v1/vms/${late.vm.id}`, tokens[lead])).body.phase === 'starting', { what: 'the late VM booting' });
    const epochBefore = leaderSelf.epoch;
    for (const a of agents) a.changes.length = 0;
    procs[lead].kill('SIGKILL');
    await new Promise((r) => procs[lead].once('exit', r));

    const after = await until(async () => {
      const r = (await api(urls[other], 'GET', '/api/v1/replicas', tokens[other])).body;
      return r.self.leader ? r : undefined;
    }, { timeoutMs: 30_000, intervalMs: 100, what: 'the other replica leads' });
    assert.ok(after.self.epoch > epochBefore, 'at a higher epoch');
    await until(() => agents.every((a) => a.agent.dialled === urls[other] && a.agent.connected && a.agent.epoch === after.self.epoch), { timeoutMs: 30_000, what: 'agents follow the new leader' });
    await until(async () => (await api(urls[other], 'GET', '/api/v1/hosts', tokens[other])).body.items.filter((h: any) => h.state === 'ready').length === 2, { timeoutMs: 20_000, what: 'hosts ready at the new leader' });

    // The unfinished create carries on under the new leader.
    const task = await until(async () => {
      const t = (await api(urls[other], 'GET', `/api/v1/tasks/${late.task.id}`, tokens[other])).body;
      return ['succeeded', 'failed'].includes(t.state) ? t : undefined;
    }, { timeoutMs: 30_000, what: 'the late VM\'s task' });
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const vms = await until(async () => {
      const items = (await api(urls[other], 'GET', '/api/v1/vms', tokens[other])).body.items;
      return items.length === 4 && items.every((v: any) => v.phase === 'running') ? items : undefined;
    }, { timeoutMs: 20_000, what: 'all four VMs running, as the new leader sees them' });
    assert.deepEqual(vms.map((v: any) => v.name).sort(), ['late', 's1', 's2', 's3']);

    // Nothing the hosts ran was stopped or started again: the same VMs, booted when they were, on the same hosts.
    const now = await running();
    assert.equal(now.size, 4);
    for (const [id, was] of before) {
      const is = now.get(id);
      assert.ok(is, `VM ${id} still runs`);
      assert.equal(is.host, was.host, `VM ${id} is where it was`);
      assert.ok(Math.abs(is.bootedAtS - was.bootedAtS) < 1, `VM ${id} was not restarted (booted at ${was.bootedAtS}, now says ${is.bootedAtS})`);
      for (const a of agents) assert.deepEqual(a.changes.filter((c) => c.id === id), [], `VM ${id} changed no state on ${a.name}`);
    }
  });
});
