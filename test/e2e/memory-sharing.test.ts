// Memory sharing end to end: control and two QEMU hosts in network namespaces. A 256 MiB guest's workload
// larger than its RAM fails alone and completes with a donor's RAM lent as swap (a temporary remote lease);
// the loan is given back (returned, or expired) leaving no daemon, no tmpfs file and no swap in the guest; a
// permanent lease grows a VM for good, across a stop and start; a loan survives a restart of its donor's
// agent and of control, and its return still leaves nothing behind. Prints request→active seconds.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import WebSocket from 'ws';
import { loanDir } from '../../src/agent/memory/tmpfs-lender.ts';
import { consoleUrl } from '../support/console.ts';
import { apiRequest } from '../support/http.ts';
import { createTestNetwork, removeTestNetwork, type TestNetwork } from '../support/netns.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const repo = join(import.meta.dirname, '..', '..');
const INSTALL = 'apt-get install iproute2 qemu-system-x86 qemu-utils busybox-static cpio';
const PASSWORD = 'e2e-admin-password';
const PORT = 8080;
const prefix = `am${process.pid % 10000}`;
const HOSTS = ['h1', 'h2'];
const POLL = { intervalMs: 200 };
/** More than a 256 MiB guest's RAM: refused at once without swap (FACTS.md). */
const WORKLOAD = 'dd if=/dev/zero of=/dev/null bs=400M count=1';
const LOAN_MIB = 512;

interface Guest {
  kernelPath: string;
  initrdPath: string;
  cmdline: string;
}

function requireGuest(): Guest {
  const file = join(process.env.AWAN_GUEST_DIR ?? join(repo, '.cache', 'guest'), 'guest.json');
  const hint = `build it with \`npm run build-guest\` (needs \`${INSTALL}\`)`;
  if (!existsSync(file)) throw new Error(`the test guest is missing (${file}): ${hint}`);
  const g = JSON.parse(readFileSync(file, 'utf8')) as Partial<Guest> & { version?: number };
  if (typeof g.kernelPath !== 'string' || typeof g.initrdPath !== 'string' || typeof g.cmdline !== 'string') {
    throw new Error(`${file} lacks kernelPath/initrdPath/cmdline: ${hint}`);
  }
  // Version 6 runs qemu-guest-agent, through which the host swaps on remote memory.
  if ((g.version ?? 0) < 6) throw new Error(`${file} is version ${g.version}; remote memory needs version 6: ${hint}`);
  for (const p of [g.kernelPath, g.initrdPath]) if (!existsSync(p)) throw new Error(`${p} is missing: ${hint}`);
  return { kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: g.cmdline };
}

/** Processes (not zombies) whose command line contains every one of `words`. */
function processesWith(...words: string[]): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (!words.every((w) => cmdline.includes(w))) continue;
      if (/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) continue;
      out.push(pid);
    } catch {
      // exited while we looked
    }
  }
  return out;
}

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
  await until(() => pids.every(gone), { timeoutMs: 10_000, what: `processes ${pids.join(', ')} to exit` }).catch(() => undefined);
}

interface GuestMemory {
  totalMiB: number;
  swapMiB: number;
  swapUsedMiB: number;
}

let marks = 0;
const runId = Math.random().toString(36).slice(2, 7);

/**
 * A VM's serial console over the API's WebSocket. The console replays its history to each viewer, so every
 * reading is anchored on a marker the guest printed after the command that asked for it.
 */
class GuestConsole {
  text = '';

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (d) => (this.text += d.toString()));
  }

  static async open(url: string, token: string, vmId: string): Promise<GuestConsole> {
    const ws = new WebSocket(await consoleUrl(url, token, vmId));
    const c = new GuestConsole(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return c;
  }

  /**
   * Types `command` into the guest's shell; its exit code and what the console showed from the typed line
   * to the end. The marker is computed by the shell, so its echo of the typed line does not match.
   */
  async run(command: string, timeoutMs = 60_000): Promise<{ code: number; output: string; end: number }> {
    const n = ++marks;
    const start = this.text.length;
    this.ws.send(`${command}; echo "AWAN-RC-${runId}-$((${n} + 0)):$?"\n`);
    const re = new RegExp(`AWAN-RC-${runId}-${n}:(\\d+)`);
    const m = await until(() => re.exec(this.text.slice(start)), { timeoutMs, what: `the guest to finish \`${command}\`` });
    return { code: Number(m[1]), output: this.text.slice(start, start + m.index), end: start + m.index + m[0].length };
  }

  /** The first complete memory report the guest printed after `offset`, in MiB. */
  memoryAfter(offset: number): GuestMemory | undefined {
    const m = /AWAN-MEM total=(\d+)KiB free=\d+KiB available=\d+KiB swap=(\d+)KiB swapfree=(\d+)KiB/.exec(this.text.slice(offset));
    return m ? { totalMiB: Number(m[1]) / 1024, swapMiB: Number(m[2]) / 1024, swapUsedMiB: (Number(m[2]) - Number(m[3])) / 1024 } : undefined;
  }

  /** A memory report printed after now that satisfies `ok`. */
  async memoryWhen(ok: (m: GuestMemory) => boolean, what: string, timeoutMs = 30_000) {
    return until(async () => {
      const { end } = await this.run('true');
      const m = await until(() => this.memoryAfter(end), { timeoutMs: 5000, what: 'a memory report' });
      return ok(m) ? m : undefined;
    }, { timeoutMs, what, intervalMs: 500 });
  }

  close(): void {
    this.ws.terminate();
  }
}

describe('memory sharing between two QEMU hosts', { timeout: 20 * 60_000 }, () => {
  let net: TestNetwork;
  let dir = '';
  let url = '';
  let token = '';
  let guest: Guest;
  const children = new Map<string, ChildProcess>();
  const consoles: GuestConsole[] = [];
  let broken = false;
  const figures: Record<string, unknown>[] = [];

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
  /** Where a host's agent keeps its loans in /dev/shm (one directory per data dir). */
  const shmOf = (name: string) => loanDir({ dataDir: hostDir(name) });
  const daemonsOf = (name: string) => processesWith('qemu-storage-daemon', `${shmOf(name)}/`);
  const imagesOf = (name: string) => (existsSync(shmOf(name)) ? readdirSync(shmOf(name)) : []);

  function startControl(): ChildProcess {
    return awan('control', net.bridgeNs, [
      'serve', '--host', net.bridgeAddress, '--port', String(PORT), '--db', `sqlite:${join(dir, 'awan.db')}`, '--pool-dir', join(dir, 'pool'),
      '--image-dir', dirname(guest.kernelPath), '--image-dir', dirname(guest.initrdPath), '--ha-host-failures', '0',
      // An agent restarted on purpose must come back before its host counts as failed (that would end its loans).
      '--host-lease-ms', '30000',
    ]);
  }

  function startAgent(name: string, joinToken?: string): ChildProcess {
    const h = net.hosts.find((x) => x.name === name)!;
    return awan(name, h.ns, [
      'agent', '--control', `http://${net.bridgeAddress}:${PORT}`, ...(joinToken ? ['--join-token', joinToken] : []),
      '--driver', 'qemu', '--data-dir', hostDir(name), '--name', name, '--address', h.address,
    ]);
  }

  async function stopChild(name: string, signal: NodeJS.Signals): Promise<void> {
    const child = children.get(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  async function login(): Promise<void> {
    await until(async () => (await fetch(`${url}/healthz`)).ok, { timeoutMs: 90_000, what: 'control up', ...POLL });
    const res = await fetch(`${url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
    assert.equal(res.status, 200);
    token = ((await res.json()) as { token: string }).token;
  }

  const api = <T = any>(method: string, path: string, body?: unknown) => apiRequest<T>(url, token, method, path, body, 15_000);

  async function waitTask(id: string, timeoutMs = 180_000): Promise<any> {
    return until(async () => {
      const t = (await api('GET', `/api/v1/tasks/${id}`)).body;
      return ['succeeded', 'failed', 'cancelled'].includes(t.state) ? t : undefined;
    }, { timeoutMs, what: `task ${id}`, ...POLL });
  }

  const hosts = async () => (await api<{ items: any[] }>('GET', '/api/v1/hosts')).body.items;
  const hostNamed = async (name: string) => (await hosts()).find((h) => h.name === name);
  const vmOf = async (id: string) => (await api('GET', `/api/v1/vms/${id}`)).body;
  const leaseOf = async (id: string) => (await api('GET', `/api/v1/memory/leases/${id}`)).body;
  const allReady = async () => {
    const items = await hosts();
    return items.length === HOSTS.length && items.every((h) => h.state === 'ready' && h.connected);
  };

  const leaseIn = (id: string, states: string[], timeoutMs = 120_000) => until(async () => {
    const l = await leaseOf(id);
    if (!states.includes(l.state) && ['returned', 'failed'].includes(l.state)) throw new Error(`lease ${id} ended ${l.state}: ${l.message}`);
    return states.includes(l.state) ? l : undefined;
  }, { timeoutMs, what: `lease ${id} ${states.join(' or ')}`, ...POLL });

  /** A running VM of the test guest, its host's name and its console. */
  async function bootVm(name: string, memory: { memoryMiB: number; maxMemoryMiB?: number }) {
    const res = await api('POST', '/api/v1/vms', { name, cpus: 1, ...memory, image: 'test-guest' });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal((await waitTask(res.body.task.id)).state, 'succeeded');
    const vm = await vmOf(res.body.vm.id);
    assert.equal(vm.phase, 'running');
    const on = (await hosts()).find((h) => h.id === vm.hostId)!.name as string;
    const c = await openConsole(vm.id);
    return { id: vm.id as string, on, other: HOSTS.find((h) => h !== on)!, console: c };
  }

  async function openConsole(vmId: string): Promise<GuestConsole> {
    const c = await GuestConsole.open(url, token, vmId);
    consoles.push(c);
    // Until the shell answers: what is typed while the guest boots is lost, in part or whole.
    await until(() => c.run('true', 3000).then(() => true, () => false), { timeoutMs: 120_000, what: 'the guest\'s shell answering' });
    return c;
  }

  /** Borrows and waits until the lease is active; the lease and request→active as the test saw it. */
  async function borrowActive(body: Record<string, unknown>) {
    const t0 = Date.now();
    const r = await api('POST', '/api/v1/memory/leases', body);
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const l = await leaseIn(r.body.lease.id, ['active']);
    return { lease: l, taskId: r.body.task.id as string, seenS: (Date.now() - t0) / 1000 };
  }

  function figure(name: string, l: any, seenS: number, extra: Record<string, unknown> = {}) {
    const fig = {
      bench: `memory-sharing.${name}.request-to-active`, value: (Date.parse(l.grantedAt) - Date.parse(l.createdAt)) / 1000, unit: 's',
      seenByClientS: seenS, sizeMiB: l.sizeMiB, mechanism: l.mechanism, accel: 'tcg', ...extra,
    };
    figures.push(fig);
    console.log(JSON.stringify(fig));
  }

  /** What a loan leaves when it is gone: no daemon, no file in /dev/shm, nothing lent, no swap in the guest. */
  async function nothingLeft(vmId: string, donor: string, c: GuestConsole): Promise<void> {
    await until(() => daemonsOf(donor).length === 0, { timeoutMs: 30_000, what: `no qemu-storage-daemon of ${donor}` });
    assert.deepEqual(imagesOf(donor), [], `nothing of ${donor} in /dev/shm`);
    assert.equal(existsSync(shmOf(donor)), false, `${shmOf(donor)} removed`);
    await c.memoryWhen((m) => m.swapMiB === 0, 'the guest without swap');
    const swaps = await c.run('cat /proc/swaps; cat /sys/block/vd*/serial');
    assert.doesNotMatch(swaps.output, /\/dev\/vd\w+\s+partition/, 'no swap device left in the guest');
    assert.doesNotMatch(swaps.output.split('\n').slice(1).join('\n'), /awan-rmem/, `the disk is unplugged in the guest:\n${swaps.output}`);
    await until(async () => (await hostNamed(donor)).memoryLentMiB === 0, { timeoutMs: 30_000, what: `${donor} lending nothing`, ...POLL });
    await until(async () => (await vmOf(vmId)).memoryStats?.remoteMiB === 0, { timeoutMs: 30_000, what: 'the VM borrowing nothing', ...POLL });
  }

  /** One scenario; after a failed one the later ones fail at once instead of running on a broken cluster. */
  function scenario(name: string, fn: (t: TestContext) => Promise<void>, timeoutMs = 5 * 60_000): void {
    it(name, { timeout: timeoutMs }, async (t) => {
      if (broken) throw new Error('not run: an earlier scenario failed');
      const started = Date.now();
      try {
        await fn(t);
      } catch (err) {
        broken = true;
        throw err;
      } finally {
        t.diagnostic(`${name}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
      }
    });
  }

  /** Processes, namespaces, files and tmpfs loans of an earlier run with the same prefix that was killed. */
  async function removeLeftovers(): Promise<void> {
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith(`awan-${prefix}-`)) continue;
      const old = join(tmpdir(), name);
      for (const h of HOSTS) {
        const shm = loanDir({ dataDir: join(old, h) });
        await killAll(processesWith(`${shm}/`));
        rmSync(shm, { recursive: true, force: true });
      }
      await killAll(processesWith(`${old}/`));
      rmSync(old, { recursive: true, force: true });
    }
    await removeTestNetwork(prefix);
  }

  before(async () => {
    requireCommand('ip', INSTALL);
    requireCommand('qemu-system-x86_64', INSTALL);
    requireCommand('qemu-img', INSTALL);
    requireCommand('qemu-storage-daemon', INSTALL);
    guest = requireGuest();
    await removeLeftovers();
    // Short: unix socket paths below it must stay within 108 bytes.
    dir = mkdtempSync(join(tmpdir(), `awan-${prefix}-`));
    net = await createTestNetwork(prefix, HOSTS);
    url = `http://${net.bridgeAddress}:${PORT}`;
  });

  after(async () => {
    for (const c of consoles) c.close();
    for (const name of [...HOSTS, 'control']) await stopChild(name, 'SIGKILL');
    if (dir) {
      // Loans live outside the test's directory: in /dev/shm, served by daemons that outlive their agent.
      for (const h of HOSTS) await killAll(processesWith(`${shmOf(h)}/`));
      await killAll(processesWith(`${dir}/`));
      for (const h of HOSTS) rmSync(shmOf(h), { recursive: true, force: true });
    }
    if (net) await removeTestNetwork(prefix);
    if (broken && dir) {
      for (const name of ['control', ...HOSTS]) {
        const file = join(dir, `${name}.log`);
        if (existsSync(file)) console.error(`--- last lines of ${name}.log ---\n${readFileSync(file, 'utf8').trim().split('\n').slice(-40).join('\n')}`);
      }
    }
    for (const f of figures) console.log(JSON.stringify(f));
    // AWAN_KEEP_TEST_DIR=1 keeps the hosts' data dirs and logs for a look after a failure.
    if (dir && !process.env.AWAN_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
  });

  it('two QEMU hosts join, and the test guest is registered', { timeout: 180_000 }, async () => {
    startControl();
    await login();
    for (const h of HOSTS) {
      const join = await api<{ token: string }>('POST', '/api/v1/hosts/join-tokens');
      assert.equal(join.status, 201, JSON.stringify(join.body));
      startAgent(h, join.body.token);
    }
    await until(allReady, { timeoutMs: 120_000, what: 'two hosts ready', ...POLL });
    const img = await api('POST', '/api/v1/images', { name: 'test-guest', format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: guest.cmdline });
    assert.equal(img.status, 201, JSON.stringify(img.body));
  });

  let small: Awaited<ReturnType<typeof bootVm>>;
  let remoteLeaseId = '';

  scenario('a workload larger than the guest fails alone, and completes with RAM lent by the other host', async () => {
    small = await bootVm('rmem-small', { memoryMiB: 256 });
    const alone = await small.console.run(WORKLOAD);
    assert.notEqual(alone.code, 0, 'the workload does not fit the guest alone');
    assert.match(alone.output, /out of memory/);

    const { lease, seenS } = await borrowActive({ vmId: small.id, sizeMiB: LOAN_MIB, kind: 'temporary', mechanism: 'remote', ttlS: 3600, donorHostId: small.other });
    remoteLeaseId = lease.id;
    assert.equal(lease.mechanism, 'remote');
    assert.equal(lease.donorHostId, (await hostNamed(small.other)).id);
    assert.equal(lease.borrowerHostId, (await hostNamed(small.on)).id);
    figure('remote', lease, seenS);

    // The donor's side: one daemon serving one tmpfs image of the loan's size.
    assert.equal(daemonsOf(small.other).length, 1, `one qemu-storage-daemon of ${small.other}`);
    const images = imagesOf(small.other).filter((f) => f.endsWith('.img'));
    assert.equal(images.length, 1, JSON.stringify(imagesOf(small.other)));
    assert.equal(daemonsOf(small.on).length, 0, 'the borrower lends nothing');
    // What the API shows of it.
    await until(async () => (await hostNamed(small.other)).memoryLentMiB === LOAN_MIB, { timeoutMs: 30_000, what: `${small.other} lending ${LOAN_MIB} MiB`, ...POLL });
    await until(async () => (await hostNamed(small.on)).memoryBorrowedMiB >= LOAN_MIB - 1, { timeoutMs: 30_000, what: `${small.on} borrowing ${LOAN_MIB} MiB`, ...POLL });
    const vm = await until(async () => {
      const v = await vmOf(small.id);
      return v.memoryStats?.remoteMiB === LOAN_MIB && (v.memoryStats?.swapTotalMiB ?? 0) >= LOAN_MIB - 1 ? v : undefined;
    }, { timeoutMs: 30_000, what: 'the VM showing its remote memory', ...POLL });
    assert.equal(vm.memoryStats.remoteMiB, LOAN_MIB);
    // The guest's side: swap of the loan's size, and the workload completes.
    await small.console.memoryWhen((m) => m.swapMiB >= LOAN_MIB - 1, 'the guest swapping to the loan');
    const disks = await small.console.run('cat /sys/block/vd*/serial /proc/swaps');
    assert.match(disks.output, /awan-rmem0/, 'a hot-plugged disk of the loan');
    assert.match(disks.output, /\/dev\/vd\w+\s+partition/, 'the guest swaps to it');
    const lent = await small.console.run(WORKLOAD, 240_000);
    assert.equal(lent.code, 0, `the workload completes with the loan:\n${lent.output}`);
  });

  scenario('a returned loan, and one that expires, leave no device, no daemon and no tmpfs file behind', async () => {
    const back = await api('POST', `/api/v1/memory/leases/${remoteLeaseId}/return`);
    assert.equal(back.status, 202, JSON.stringify(back.body));
    assert.equal((await waitTask(back.body.task.id)).state, 'succeeded');
    assert.equal((await leaseOf(remoteLeaseId)).state, 'returned');
    await nothingLeft(small.id, small.other, small.console);

    const { lease } = await borrowActive({ vmId: small.id, sizeMiB: 256, kind: 'temporary', mechanism: 'remote', ttlS: 8 });
    assert.equal(lease.donorHostId, (await hostNamed(small.other)).id, 'the only other host lends');
    assert.equal(daemonsOf(small.other).length, 1);
    await small.console.memoryWhen((m) => m.swapMiB >= 255, 'the guest swapping to the second loan');
    const ended = await leaseIn(lease.id, ['returned'], 90_000);
    assert.match(ended.message, /expired/);
    await nothingLeft(small.id, small.other, small.console);
    // The workload fails again: the memory went back.
    const alone = await small.console.run(WORKLOAD);
    assert.notEqual(alone.code, 0);
    // Its CPU is for the next guests.
    const stop = await api('POST', `/api/v1/vms/${small.id}/stop`, {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await waitTask(stop.body.task.id)).state, 'succeeded');
  });

  let big: Awaited<ReturnType<typeof bootVm>>;

  scenario('a permanent lease grows the VM in place, and the VM keeps the memory across a stop and start', async (t) => {
    big = await bootVm('rmem-grow', { memoryMiB: 256, maxMemoryMiB: 768 });
    const before = await big.console.memoryWhen(() => true, 'a memory report');
    const { lease, taskId, seenS } = await borrowActive({ vmId: big.id, sizeMiB: 256, kind: 'permanent', mechanism: 'grow' });
    const task = await waitTask(taskId);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const l = await leaseOf(lease.id);
    assert.equal(l.kind, 'permanent');
    assert.equal(l.mechanism, 'grow');
    assert.equal(l.donorHostId, null);
    figure('grow', lease, seenS, { permanentS: (Date.parse(task.finishedAt ?? task.updatedAt) - Date.parse(l.createdAt)) / 1000 });
    assert.equal((await vmOf(big.id)).memoryMiB, 512);
    const grown = await big.console.memoryWhen((m) => m.totalMiB >= before.totalMiB + 250, 'the guest seeing 256 MiB more');
    t.diagnostic(`guest MemTotal ${before.totalMiB} MiB -> ${grown.totalMiB} MiB`);

    const stop = await api('POST', `/api/v1/vms/${big.id}/stop`, {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await waitTask(stop.body.task.id)).state, 'succeeded');
    const start = await api('POST', `/api/v1/vms/${big.id}/start`, {});
    assert.equal(start.status, 202, JSON.stringify(start.body));
    assert.equal((await waitTask(start.body.task.id)).state, 'succeeded');
    const vm = await vmOf(big.id);
    assert.equal(vm.memoryMiB, 512);
    assert.equal(vm.phase, 'running');
    big.on = (await hosts()).find((h) => h.id === vm.hostId)!.name;
    big.other = HOSTS.find((h) => h !== big.on)!;
    big.console = await openConsole(big.id);
    const rebooted = await big.console.memoryWhen((m) => m.totalMiB >= before.totalMiB + 250, 'the rebooted guest with 512 MiB');
    t.diagnostic(`guest MemTotal after the restart: ${rebooted.totalMiB} MiB`);
    const ret = await api('POST', `/api/v1/memory/leases/${lease.id}/return`);
    assert.equal(ret.status, 409, 'a permanent lease is part of the VM');
  });

  scenario('a loan survives a restart of its donor\'s agent and of control, and its return leaves nothing behind', async (t) => {
    const { lease } = await borrowActive({ vmId: big.id, sizeMiB: 256, kind: 'temporary', mechanism: 'remote', ttlS: 3600, donorHostId: big.other });
    await big.console.memoryWhen((m) => m.swapMiB >= 255, 'the guest swapping to the loan');
    // ~500 MiB of data in a guest tmpfs, more than the guest's 470 MiB of RAM: some of it can only be on the
    // donor, through the restarts. Two files: one goes before the return, so the other fits back in RAM.
    // (8 MiB of random bytes over and over: random data is slow to make under TCG.)
    const write = await big.console.run(
      'mkdir -p /mnt/t && mount -t tmpfs -o size=600m tmpfs /mnt/t && dd if=/dev/urandom of=/mnt/t/r bs=1M count=8 2>/dev/null && '
        + '(for i in $(seq 37); do cat /mnt/t/r; done) > /mnt/t/a && (for i in $(seq 25); do cat /mnt/t/r; done) > /mnt/t/b && rm /mnt/t/r && md5sum /mnt/t/a /mnt/t/b',
      300_000,
    );
    assert.equal(write.code, 0, write.output);
    const sums = (out: string) => [...out.matchAll(/([0-9a-f]{32}) {2}\/mnt\/t\/([ab])/g)].map((m) => `${m[2]}:${m[1]}`).sort();
    const written = sums(write.output);
    assert.equal(written.length, 2, write.output);
    const held = (await big.console.memoryWhen((m) => m.swapUsedMiB > 20, 'the guest\'s pages on the donor')).swapUsedMiB;
    t.diagnostic(`${held} MiB of the guest on the donor during the restarts; the VM's JSON: ${JSON.stringify((await vmOf(big.id)).memoryStats)}`);
    const [daemon] = daemonsOf(big.other);
    assert.ok(daemon, 'the donor serves the loan');
    const qemu = processesWith('qemu-system', big.id);
    assert.equal(qemu.length, 1);

    // Restarted as an operator does (SIGTERM), then after a crash (SIGKILL).
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      await stopChild(big.other, signal);
      await until(async () => !(await hostNamed(big.other)).connected, { timeoutMs: 30_000, what: `control seeing ${big.other}'s agent gone`, ...POLL });
      assert.ok(!gone(daemon), `the loan outlives its agent (${signal})`);
      startAgent(big.other);
      await until(allReady, { timeoutMs: 120_000, what: `${big.other} ready again`, ...POLL });
    }
    await stopChild('control', 'SIGKILL');
    startControl();
    await login();
    await until(allReady, { timeoutMs: 120_000, what: 'both hosts ready after control restarted', ...POLL });
    // A pass or two of the broker after the restart: the loan is as it was.
    await until(async () => (await hostNamed(big.other)).memoryLentMiB === 256, { timeoutMs: 60_000, what: `${big.other} reporting its loan`, ...POLL });
    const l = await leaseOf(lease.id);
    assert.equal(l.state, 'active', JSON.stringify(l));
    assert.deepEqual(daemonsOf(big.other), [daemon], 'the same daemon serves it');
    assert.deepEqual(processesWith('qemu-system', big.id), qemu, 'the same QEMU runs the guest');

    big.console = await openConsole(big.id);
    await big.console.memoryWhen((m) => m.swapMiB >= 255, 'the guest still swapping to the loan');
    // Every page the donor held through the restarts reads back as it was written.
    const reread = await big.console.run('md5sum /mnt/t/a /mnt/t/b && rm /mnt/t/a', 300_000);
    assert.equal(reread.code, 0, reread.output);
    assert.deepEqual(sums(reread.output), written, `the guest's data is intact (${held} MiB were on the donor)`);
    const back = await api('POST', `/api/v1/memory/leases/${lease.id}/return`);
    assert.equal(back.status, 202, JSON.stringify(back.body));
    assert.equal((await waitTask(back.body.task.id)).state, 'succeeded');
    assert.equal((await leaseOf(lease.id)).state, 'returned');
    await nothingLeft(big.id, big.other, big.console);
    assert.equal((await vmOf(big.id)).phase, 'running');
    // What was still on the donor came back into the guest's RAM before the disk went.
    const check = await big.console.run('md5sum /mnt/t/b', 120_000);
    assert.equal(check.code, 0, check.output);
    assert.deepEqual(sums(check.output), written.filter((w) => w.startsWith('b:')), 'the guest\'s data is intact after the return');
    await big.console.run('umount /mnt/t');
  });
});
