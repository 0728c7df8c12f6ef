// kill -9 of `awan serve` loses no host or VM; after a restart, unfinished tasks resume or fail with a reason.
import { freePort } from '../support/processes.ts';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Agent } from '../../src/agent/agent.ts';
import { createSimDriver, type SimDriver } from '../../src/drivers/sim/index.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { openStore } from '../../src/control/store/db.ts';
import { until } from '../until.ts';

const repo = join(import.meta.dirname, '..', '..');


describe('control killed with SIGKILL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-restart-'));
  const children: ChildProcess[] = [];
  const agents: { agent: Agent; driver: SimDriver }[] = [];
  after(async () => {
    for (const a of agents) {
      await a.agent.stop();
      await a.driver.close();
    }
    for (const ch of children) if (ch.exitCode === null) ch.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps hosts and VMs, and finishes the tasks it was running', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const serve = () => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve', '--port', String(port), '--db', `sqlite:${join(dir, 'awan.db')}`, '--pool-dir', join(dir, 'pool')], {
        cwd: repo,
        env: { ...process.env, AWAN_ADMIN_PASSWORD: 'admin-password', AWAN_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      children.push(child);
      return child;
    };
    const api = async (method: string, path: string, token: string, body?: unknown) => {
      const res = await fetch(url + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
      return { status: res.status, body: (await res.json()) as any };
    };
    const login = async () => {
      const res = await fetch(`${url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: 'admin-password' }) });
      return ((await res.json()) as { token: string }).token;
    };

    let control = serve();
    await until(async () => (await fetch(`${url}/healthz`)).ok, { timeoutMs: 30_000, what: 'control up' });
    let token = await login();
    for (const name of ['h1', 'h2']) {
      const { body } = await api('POST', '/api/v1/hosts/join-tokens', token);
      // Slow boots, so that VMs are still starting when control dies.
      const driver = createSimDriver({ hostname: name, address: name, memoryMiB: 8192, bootDelayMs: 1500 });
      const agent = new Agent({ control: url, joinToken: body.token, driver, dataDir: join(dir, name), name, log: createLogger(name, 'silent'), maxBackoffMs: 300 });
      await agent.start();
      agents.push({ agent, driver });
    }
    await until(async () => (await api('GET', '/api/v1/hosts', token)).body.items.filter((h: any) => h.state === 'ready').length === 2, { what: 'hosts ready' });
    const settled = await api('POST', '/api/v1/vms', token, { name: 'settled', cpus: 1, memoryMiB: 512 });
    await until(async () => (await api('GET', `/api/v1/tasks/${settled.body.task.id}`, token)).body.state === 'succeeded', { what: 'first VM' });

    const inflight = [];
    for (const name of ['late-1', 'late-2', 'late-3']) inflight.push((await api('POST', '/api/v1/vms', token, { name, cpus: 1, memoryMiB: 512 })).body.task.id);
    await until(async () => (await api('GET', '/api/v1/vms?phase=starting', token)).body.items.length > 0, { what: 'a VM starting' });
    control.kill('SIGKILL');
    await new Promise((r) => control.once('exit', r));

    // A reboot the dead process had sent cannot be known to have happened: it must fail with a reason.
    const store = await openStore(`sqlite:${join(dir, 'awan.db')}`);
    const reboot = (await store.db.selectFrom('tasks').selectAll().where('target_id', '=', settled.body.vm.id).executeTakeFirstOrThrow());
    await store.db.insertInto('tasks').values({ ...reboot, id: 'leftover-reboot', kind: 'reboot', state: 'running', finished_at: null }).execute();
    await store.close();

    control = serve();
    await until(async () => (await fetch(`${url}/healthz`)).ok, { timeoutMs: 30_000, what: 'control back' });
    token = await login();
    const hosts = (await api('GET', '/api/v1/hosts', token)).body.items;
    assert.deepEqual(hosts.map((h: any) => h.name).sort(), ['h1', 'h2']);
    const vms = (await api('GET', '/api/v1/vms', token)).body.items;
    assert.deepEqual(vms.map((v: any) => v.name).sort(), ['late-1', 'late-2', 'late-3', 'settled']);
    // Every task the dead process left ends: the creates resume and their VMs run.
    for (const id of inflight) {
      const task = await until(async () => {
        const t = (await api('GET', `/api/v1/tasks/${id}`, token)).body;
        return ['succeeded', 'failed'].includes(t.state) ? t : undefined;
      }, { timeoutMs: 30_000, what: `task ${id}` });
      assert.equal(task.state, 'succeeded', JSON.stringify(task));
    }
    const leftover = (await api('GET', '/api/v1/tasks/leftover-reboot', token)).body;
    assert.equal(leftover.state, 'failed');
    assert.equal(leftover.error.code, 'INTERRUPTED');
    assert.match(leftover.error.message, /control restarted before the reboot finished/);
    await until(async () => (await api('GET', '/api/v1/vms?phase=running', token)).body.items.length === 4, { timeoutMs: 30_000, what: 'all VMs running' });
    const running = agents.reduce(async (n, a) => (await n) + (await a.driver.list()).filter((v) => v.state === 'running').length, Promise.resolve(0));
    assert.equal(await running, 4, 'each VM runs exactly once across the hosts');
  });
});
