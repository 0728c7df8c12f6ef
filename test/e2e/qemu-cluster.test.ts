// Two hosts running real QEMU in their own network namespaces: join, boot, console, balloon, migration, agent restart, delete.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import WebSocket from 'ws';
import { consoleUrl } from '../support/console.ts';
import { createTestNetwork, removeTestNetwork, type TestNetwork } from '../support/netns.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const repo = join(import.meta.dirname, '..', '..');
const INSTALL = 'apt-get install iproute2 qemu-system-x86 qemu-utils busybox-static cpio';
const PASSWORD = 'e2e-admin-password';
const PORT = 8080;
const prefix = `aw${process.pid % 10000}`;
const POLL = { intervalMs: 200 };

interface Guest {
  kernelPath: string;
  initrdPath: string;
  cmdline: string;
}

function requireGuest(): Guest {
  const file = join(process.env.AWAN_GUEST_DIR ?? join(repo, '.cache', 'guest'), 'guest.json');
  const hint = `build it with \`npm run build-guest\` (needs \`${INSTALL}\`)`;
  if (!existsSync(file)) throw new Error(`the test guest is missing (${file}): ${hint}`);
  const g = JSON.parse(readFileSync(file, 'utf8')) as Partial<Guest>;
  if (typeof g.kernelPath !== 'string' || typeof g.initrdPath !== 'string' || typeof g.cmdline !== 'string') {
    throw new Error(`${file} lacks kernelPath/initrdPath/cmdline: ${hint}`);
  }
  for (const p of [g.kernelPath, g.initrdPath]) if (!existsSync(p)) throw new Error(`${p} is missing: ${hint}`);
  return { kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: g.cmdline };
}

/** Processes whose command line contains every one of `words`, read from /proc (ps may truncate). */
function pidsWith(...words: string[]): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/\) [ZX] /.test(stat)) continue; // a zombie has already let go of everything
      if (words.every((w) => cmdline.includes(w))) pids.push(pid);
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

const qemuPids = (dataDir: string, vmId: string) => pidsWith('qemu-system', `${dataDir}/`, vmId);

/** Exited, or a zombie whose new parent has not reaped it yet. */
function gone(pid: number): boolean {
  try {
    return /\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

async function killAll(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await until(() => pids.every(gone), {
    timeoutMs: 10_000,
    what: `processes ${pids.join(', ')} to exit`,
  }).catch(() => undefined);
}

/** A viewer of a VM's serial console: history, then live output, all kept in `text`. */
class ConsoleViewer {
  text = '';
  closed: { code: number; reason: string } | undefined;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (d) => (this.text += d.toString()));
    ws.on('close', (code, reason) => (this.closed = { code, reason: reason.toString() }));
  }

  static async open(url: string, token: string, vmId: string): Promise<ConsoleViewer> {
    const ws = new WebSocket(await consoleUrl(url, token, vmId));
    const viewer = new ConsoleViewer(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return viewer;
  }

  /** Every complete `AWAN-UPTIME <s>` line from `offset` on, in seconds. */
  uptimes(offset = 0): number[] {
    return [...this.text.slice(offset).matchAll(/AWAN-UPTIME (\d+(?:\.\d+)?)\r?\n/g)].map((m) => Number(m[1]));
  }

  /** The guest's last complete memory report from `offset` on, in MiB. */
  memory(offset = 0): { totalMiB: number; freeMiB: number } | undefined {
    const last = [...this.text.slice(offset).matchAll(/AWAN-MEM total=(\d+)KiB free=(\d+)KiB/g)].at(-1);
    return last ? { totalMiB: Number(last[1]) / 1024, freeMiB: Number(last[2]) / 1024 } : undefined;
  }

  close(): void {
    this.ws.terminate();
  }
}

describe('a two-host cluster with real QEMU', { timeout: 15 * 60_000 }, () => {
  let net: TestNetwork;
  let dir = '';
  let url = '';
  let token = '';
  let guest: Guest;
  const children = new Map<string, ChildProcess>();
  const viewers: ConsoleViewer[] = [];
  let broken = false;

  const env = (): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env, AWAN_ACCEL: 'tcg', AWAN_ADMIN_PASSWORD: PASSWORD, AWAN_LOG_LEVEL: 'info' };
    delete e.NODE_TEST_CONTEXT;
    return e;
  };

  /** Runs `awan <args>` inside namespace `ns`, its output appended to <dir>/<name>.log. */
  function awan(name: string, ns: string, args: string[]): ChildProcess {
    const log = openSync(join(dir, `${name}.log`), 'a');
    try {
      const [cmd, ...argv] = net.inNs(ns, [process.execPath, '--import', 'tsx', 'src/cli/main.ts', ...args]);
      const child = spawn(cmd, argv, { cwd: repo, env: env(), stdio: ['ignore', log, log] });
      children.set(name, child);
      return child;
    } finally {
      closeSync(log);
    }
  }

  const hostDir = (name: string) => join(dir, name);

  function startAgent(h: TestNetwork['hosts'][number], joinToken?: string): ChildProcess {
    return awan(h.name, h.ns, [
      'agent', '--control', `http://${net.bridgeAddress}:${PORT}`, ...(joinToken ? ['--join-token', joinToken] : []),
      '--driver', 'qemu', '--data-dir', hostDir(h.name), '--name', h.name, '--address', h.address,
    ]);
  }

  async function stopChild(name: string, signal: NodeJS.Signals): Promise<void> {
    const child = children.get(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  async function api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
  }

  async function waitTask(id: string, timeoutMs = 120_000): Promise<any> {
    return until(async () => {
      const t = (await api('GET', `/api/v1/tasks/${id}`)).body;
      return ['succeeded', 'failed', 'cancelled'].includes(t.state) ? t : undefined;
    }, { timeoutMs, what: `task ${id}`, ...POLL });
  }

  const host = async (name: string) => (await api<{ items: any[] }>('GET', '/api/v1/hosts')).body.items.find((h) => h.name === name);

  /** One scenario step; after a failed step the later ones fail at once instead of running on a broken cluster. */
  function step(name: string, fn: (t: TestContext) => Promise<void>, timeoutMs = 180_000): void {
    it(name, { timeout: timeoutMs }, async (t) => {
      if (broken) throw new Error('not run: an earlier step failed');
      try {
        await fn(t);
      } catch (err) {
        broken = true;
        throw err;
      }
    });
  }

  /** Removes what an earlier run with the same prefix left behind when it was killed. */
  async function removeLeftovers(): Promise<void> {
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith(`awan-${prefix}-`)) continue;
      const old = join(tmpdir(), name);
      await killAll(pidsWith(`${old}/`));
      rmSync(old, { recursive: true, force: true });
    }
    await removeTestNetwork(prefix);
  }

  before(async () => {
    requireCommand('ip', INSTALL);
    requireCommand('qemu-system-x86_64', INSTALL);
    requireCommand('qemu-img', INSTALL);
    guest = requireGuest();
    await removeLeftovers();
    // Short: unix socket paths below it must stay within 108 bytes.
    dir = mkdtempSync(join(tmpdir(), `awan-${prefix}-`));
    net = await createTestNetwork(prefix, ['h1', 'h2']);
    url = `http://${net.bridgeAddress}:${PORT}`;
  });

  after(async () => {
    for (const v of viewers) v.close();
    // Agents first, so that nothing starts a QEMU while the others go.
    for (const name of ['h1', 'h2', 'control']) await stopChild(name, 'SIGKILL');
    if (dir) await killAll(pidsWith(`${dir}/`));
    await removeTestNetwork(prefix);
    if (broken && dir) {
      for (const name of ['control', 'h1', 'h2']) {
        const file = join(dir, `${name}.log`);
        if (existsSync(file)) console.error(`--- last lines of ${name}.log ---\n${readFileSync(file, 'utf8').trim().split('\n').slice(-30).join('\n')}`);
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let vmId = '';
  let vmHost = '';
  let viewer: ConsoleViewer;

  step('two hosts join and are ready with the qemu driver', async () => {
    awan('control', net.bridgeNs, ['serve', '--host', net.bridgeAddress, '--port', String(PORT), '--db', `sqlite:${join(dir, 'awan.db')}`, '--pool-dir', join(dir, 'pool'), '--image-dir', dirname(guest.kernelPath), '--image-dir', dirname(guest.initrdPath)]);
    await until(async () => (await fetch(`${url}/healthz`)).ok, { timeoutMs: 60_000, what: 'control up', ...POLL });
    const login = await fetch(`${url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
    assert.equal(login.status, 200);
    token = ((await login.json()) as { token: string }).token;
    for (const h of net.hosts) {
      const join = await api<{ token: string }>('POST', '/api/v1/hosts/join-tokens');
      assert.equal(join.status, 201, JSON.stringify(join.body));
      startAgent(h, join.body.token);
    }
    const hosts = await until(async () => {
      const items = (await api<{ items: any[] }>('GET', '/api/v1/hosts')).body.items;
      return items.length === 2 && items.every((h) => h.state === 'ready') ? items : undefined;
    }, { timeoutMs: 60_000, what: 'both hosts ready', ...POLL });
    for (const h of net.hosts) {
      const shown = hosts.find((x) => x.name === h.name);
      assert.ok(shown, `host ${h.name} is listed`);
      assert.equal(shown.driver, 'qemu');
      assert.equal(shown.address, h.address);
      assert.equal(shown.connected, true);
      assert.equal(shown.accelerator, 'tcg');
      assert.ok(shown.capabilities.includes('live-migration'), JSON.stringify(shown.capabilities));
    }
  });

  step('registers the test guest as a kernel image', async () => {
    const res = await api('POST', '/api/v1/images', { name: 'test-guest', format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: guest.cmdline });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.format, 'kernel');
    assert.equal(res.body.kernelPath, guest.kernelPath);
  });

  step('boots a VM whose serial console shows the guest counting its uptime', async () => {
    const res = await api('POST', '/api/v1/vms', { name: 'e2e-vm', cpus: 1, memoryMiB: 256, maxMemoryMiB: 512, image: 'test-guest' });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    vmId = res.body.vm.id;
    const task = await waitTask(res.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const vm = (await api('GET', `/api/v1/vms/${vmId}`)).body;
    assert.equal(vm.phase, 'running');
    vmHost = (await api<{ items: any[] }>('GET', '/api/v1/hosts')).body.items.find((h) => h.id === vm.hostId)?.name;
    assert.ok(vmHost, `VM host ${vm.hostId} is one of ours`);
    assert.equal(qemuPids(hostDir(vmHost), vmId).length, 1, `one QEMU for the VM on ${vmHost}`);

    viewer = await ConsoleViewer.open(url, token, vmId);
    viewers.push(viewer);
    await until(() => viewer.text.includes('AWAN-BOOTED'), { timeoutMs: 120_000, what: 'AWAN-BOOTED on the console' });
    const counted = await until(() => {
      const u = viewer.uptimes();
      return u.length >= 3 && u.at(-1)! > u[0] ? u : undefined;
    }, { timeoutMs: 30_000, what: 'the uptime counting on the console' });
    for (let i = 1; i < counted.length; i++) assert.ok(counted[i] >= counted[i - 1], `uptime never goes back: ${counted.join(' ')}`);
  });

  step('moves the balloon and the guest reports less memory', async (t) => {
    const before = await until(() => viewer.memory(), { timeoutMs: 30_000, what: 'a memory report' });
    const offset = viewer.text.length;
    const res = await api('POST', `/api/v1/vms/${vmId}/memory`, { targetMiB: 192 });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const task = await waitTask(res.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    await until(async () => (await api('GET', `/api/v1/vms/${vmId}`)).body.memoryActualMiB === 192, { timeoutMs: 30_000, what: 'memoryActualMiB 192', ...POLL });
    // 64 MiB went into the balloon. With deflate-on-oom the guest keeps its total and shows them as used
    // (less free); without it the total shrinks. Either is what the guest itself sees.
    const after = await until(() => {
      const m = viewer.memory(offset);
      return m && (before.totalMiB - m.totalMiB >= 48 || before.freeMiB - m.freeMiB >= 48) ? m : undefined;
    }, { timeoutMs: 30_000, what: `the guest reporting 64 MiB less (before: ${JSON.stringify(before)}, now: ${JSON.stringify(viewer.memory(offset))})` });
    t.diagnostic(`guest memory before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
  });

  step('migrates the VM to the other host, and the guest keeps counting', async (t) => {
    const src = vmHost;
    const dst = net.hosts.find((h) => h.name !== src)!;
    const lastBefore = Math.max(...viewer.uptimes());
    const res = await api('POST', `/api/v1/vms/${vmId}/migrate`, { host: dst.name });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const task = await waitTask(res.body.task.id, 180_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal(typeof task.result.totalMs, 'number');
    assert.equal(typeof task.result.downtimeMs, 'number');
    assert.ok(task.result.totalMs > 0 && task.result.downtimeMs >= 0, JSON.stringify(task.result));
    t.diagnostic(`migration: ${task.message}`);
    const vm = (await api('GET', `/api/v1/vms/${vmId}`)).body;
    const dstHost = await host(dst.name);
    // The agents run with the default mode: live under KVM, the guest paused for the copy under TCG.
    const mode = (await host(src))?.accelerator === 'tcg' ? 'paused' : 'live';
    assert.equal(task.result.mode, mode, JSON.stringify(task.result));
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.ok(metrics.includes(`awan_migration_downtime_seconds_count{mode="${mode}"} 1`), 'the migration is in the metrics');
    assert.equal(vm.hostId, dstHost.id, 'the VM runs on the other host');
    assert.equal(vm.phase, 'running');
    vmHost = dst.name;
    await until(() => qemuPids(hostDir(src), vmId).length === 0, { timeoutMs: 30_000, what: `the source QEMU on ${src} to exit` });
    assert.equal(qemuPids(hostDir(dst.name), vmId).length, 1, `one QEMU for the VM on ${dst.name}`);

    viewer.close();
    viewer = await ConsoleViewer.open(url, token, vmId);
    viewers.push(viewer);
    const after = await until(() => {
      const u = viewer.uptimes();
      return u.length >= 2 && u.at(-1)! > u[0] ? u : undefined;
    }, { timeoutMs: 30_000, what: 'the uptime counting on the console after the migration' });
    t.diagnostic(`uptime before the migration ${lastBefore} s, after ${after.join(', ')} s`);
    assert.ok(after[0] >= lastBefore, `uptime continues from ${lastBefore} s (not reset): ${after.join(' ')}`);
  });

  step('keeps the VM running while the agent of its host restarts', async () => {
    const h = net.hosts.find((x) => x.name === vmHost)!;
    const [pid] = qemuPids(hostDir(h.name), vmId);
    assert.ok(pid, 'the VM has a QEMU process');
    await stopChild(h.name, 'SIGKILL');
    await until(async () => (await host(h.name))?.state === 'unreachable', { timeoutMs: 30_000, what: `${h.name} unreachable`, ...POLL });
    assert.deepEqual(qemuPids(hostDir(h.name), vmId), [pid], 'QEMU outlives its agent');

    startAgent(h);
    await until(async () => {
      const shown = await host(h.name);
      return shown?.state === 'ready' && shown.connected;
    }, { timeoutMs: 60_000, what: `${h.name} ready again`, ...POLL });
    await until(async () => (await api('GET', `/api/v1/vms/${vmId}`)).body.phase === 'running', { timeoutMs: 30_000, what: 'the VM running', ...POLL });
    const vm = (await api('GET', `/api/v1/vms/${vmId}`)).body;
    assert.equal(vm.hostId, (await host(h.name)).id);
    assert.deepEqual(qemuPids(hostDir(h.name), vmId), [pid], 'the same QEMU process runs the VM');

    // The restarted agent serves the console of the VM it re-attached to.
    viewer.close();
    const lastBefore = Math.max(...viewer.uptimes());
    viewer = await ConsoleViewer.open(url, token, vmId);
    viewers.push(viewer);
    await until(() => viewer.uptimes().some((u) => u > lastBefore), { timeoutMs: 30_000, what: `the uptime counting past ${lastBefore} s` });
  });

  step('deletes the VM and its QEMU process goes', async () => {
    const [pid] = qemuPids(hostDir(vmHost), vmId);
    assert.ok(pid);
    const res = await api('DELETE', `/api/v1/vms/${vmId}`);
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const task = await waitTask(res.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    await until(async () => (await api('GET', `/api/v1/vms/${vmId}`)).status === 404, { timeoutMs: 30_000, what: 'the VM gone from the API', ...POLL });
    await until(() => pidsWith('qemu-system', vmId).length === 0, { timeoutMs: 30_000, what: 'no QEMU for the VM on any host' });
    assert.ok(gone(pid), `QEMU ${pid} has exited`);
  });

  step('stops a VM while it boots: the boot is abandoned at once, no QEMU stays', async () => {
    // The guest never prints this, so its boot would last the host's whole boot wait (120 s).
    const img = await api('POST', '/api/v1/images', { name: 'slow-guest', format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: guest.cmdline, readyText: 'NEVER-PRINTED-BY-THE-GUEST' });
    assert.equal(img.status, 201, JSON.stringify(img.body));
    const res = await api('POST', '/api/v1/vms', { name: 'e2e-sleepy', cpus: 1, memoryMiB: 128, image: 'slow-guest' });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const id = res.body.vm.id;
    await until(() => pidsWith('qemu-system', id).length === 1, { timeoutMs: 60_000, what: 'QEMU started for the booting VM' });
    assert.equal((await api('GET', `/api/v1/vms/${id}`)).body.phase, 'starting');
    const stop = await api('POST', `/api/v1/vms/${id}/stop`, {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    // Well inside the 120 s the boot would have waited.
    const task = await waitTask(stop.body.task.id, 60_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal((await api('GET', `/api/v1/vms/${id}`)).body.phase, 'stopped');
    assert.equal((await api('GET', `/api/v1/tasks/${res.body.task.id}`)).body.state, 'cancelled');
    await until(() => pidsWith('qemu-system', id).length === 0, { timeoutMs: 30_000, what: 'no QEMU left for the stopped VM' });
    assert.equal((await waitTask((await api('DELETE', `/api/v1/vms/${id}`)).body.task.id)).state, 'succeeded');
  });
});
