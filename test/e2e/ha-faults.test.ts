// HA under real failures: three QEMU hosts in network namespaces, each HA guest stamping its disk on a shared
// pool or on replicated storage (its host's disk with a synchronous copy on another). For each fault (a host
// killed, cut from control, its agent hung, a flapping link, control restarted in the middle of a failover)
// the guest must end running on one host, no two QEMUs of it may ever run at once, and its disk must hold
// one writer's stamps at a time with every stamp a console saw acknowledged. A drain moves a replicated guest
// live onto its disk's copy: one boot, every stamp on the copy that became its disk.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { createFaults, type Faults } from '../support/faults.ts';
import { apiRequest } from '../support/http.ts';
import { createTestNetwork, removeTestNetwork, type TestNetwork } from '../support/netns.ts';
import { acknowledgedStamps, stampSwitch, verifyStamps } from '../support/stamps.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const repo = join(import.meta.dirname, '..', '..');
const INSTALL = 'apt-get install iproute2 qemu-system-x86 qemu-utils busybox-static cpio';
const PASSWORD = 'e2e-admin-password';
const PORT = 8080;
const prefix = `ah${process.pid % 10000}`;
const HOSTS = ['h1', 'h2', 'h3'];
const POLL = { intervalMs: 200 };
const LEASE_MS = 3000;
const MARGIN_MS = 1000;
const HEARTBEAT_MS = 500;
/** Stamps of a boot seen acknowledged before a fault (10 a second). */
const STAMPS_BEFORE = 30;
/** Stamps of the boot that runs at the end, after everything came back: time for a stale copy to show. */
const STAMPS_AFTER = 50;
/** How often the QEMUs of the guest are counted across all hosts. */
const SAMPLE_MS = 75;

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
  if ((g.version ?? 0) < 5) throw new Error(`${file} is version ${g.version}; the stamping guest is version 5: ${hint}`);
  for (const p of [g.kernelPath, g.initrdPath]) if (!existsSync(p)) throw new Error(`${p} is missing: ${hint}`);
  return { kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: g.cmdline };
}

/** Processes (not zombies) whose command line contains every one of `words`, with their command lines. */
function processesWith(...words: string[]): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (!words.every((w) => cmdline.includes(w))) continue;
      if (/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) continue;
      out.push({ pid, cmdline });
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

/** What a sampler saw of one guest's QEMUs: the most at once, and when each QEMU was first and last seen. */
interface QemuWatch {
  maxAtOnce: number;
  /** Samples with two or more QEMUs, as `time: host/pid …`. */
  overlaps: string[];
  seen: Map<number, { host: string; firstMs: number; lastMs: number }>;
  samples: number;
  stop(): void;
}

describe('HA with real failures on three QEMU hosts', { timeout: 60 * 60_000 }, () => {
  let net: TestNetwork;
  let faults: Faults | undefined;
  let dir = '';
  let url = '';
  let token = '';
  let guest: Guest;
  const children = new Map<string, ChildProcess>();
  const timers = new Set<NodeJS.Timeout>();
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
  const poolDir = () => join(dir, 'pool');
  const ns = (name: string) => net.hosts.find((h) => h.name === name)!.ns;

  function startControl(): ChildProcess {
    return awan('control', net.bridgeNs, [
      'serve', '--host', net.bridgeAddress, '--port', String(PORT), '--db', `sqlite:${join(dir, 'awan.db')}`, '--pool-dir', poolDir(),
      '--image-dir', dirname(guest.kernelPath), '--image-dir', dirname(guest.initrdPath),
      '--host-lease-ms', String(LEASE_MS), '--failover-margin-ms', String(MARGIN_MS), '--heartbeat-ms', String(HEARTBEAT_MS), '--ha-host-failures', '0',
      // The scenarios fail the same hosts again and again on purpose: no quarantine for flapping.
      '--host-flap-failures', '0',
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
  const vmOf = async (id: string) => (await api('GET', `/api/v1/vms/${id}`)).body;
  const hostName = async (hostId: string) => (await hosts()).find((h) => h.id === hostId)?.name as string | undefined;

  const allReady = async () => {
    const items = await hosts();
    return items.length === HOSTS.length && items.every((h) => h.state === 'ready' && h.connected);
  };

  /** The host (by data dir) of each live QEMU of the guest, across all hosts. */
  function qemusOf(vmId: string): { pid: number; host: string }[] {
    return processesWith('qemu-system', vmId).map(({ pid, cmdline }) => ({ pid, host: HOSTS.find((h) => cmdline.includes(`${hostDir(h)}/`)) ?? '?' }));
  }

  function watchQemus(vmId: string): QemuWatch {
    const w: QemuWatch = { maxAtOnce: 0, overlaps: [], seen: new Map(), samples: 0, stop: () => { clearInterval(timer); timers.delete(timer); } };
    const sample = () => {
      const now = Date.now();
      const qs = qemusOf(vmId);
      w.samples++;
      w.maxAtOnce = Math.max(w.maxAtOnce, qs.length);
      if (qs.length > 1) w.overlaps.push(`${new Date(now).toISOString()}: ${qs.map((q) => `${q.host}/${q.pid}`).join(' ')}`);
      for (const q of qs) {
        const s = w.seen.get(q.pid);
        if (s) s.lastMs = now;
        else w.seen.set(q.pid, { host: q.host, firstMs: now, lastMs: now });
      }
    };
    const timer = setInterval(sample, SAMPLE_MS);
    timers.add(timer);
    sample();
    return w;
  }

  /**
   * The guest's console on every host, read from the history each agent keeps (<data dir>/qemu/vms/<id>/console.log)
   * while it is there: a host that forgets the VM removes it. A history that starts over is kept as another text.
   */
  function collectConsoles(vmId: string) {
    const current = new Map<string, string>();
    const earlier: string[] = [];
    const read = () => {
      for (const h of HOSTS) {
        let text: string;
        try {
          text = readFileSync(join(hostDir(h), 'qemu', 'vms', vmId, 'console.log'), 'utf8');
        } catch {
          continue;
        }
        const was = current.get(h);
        if (was && !text.startsWith(was)) earlier.push(was);
        current.set(h, text);
      }
    };
    const timer = setInterval(read, 250);
    timers.add(timer);
    read();
    const texts = () => [...earlier, ...current.values()];
    return {
      texts,
      /** Acknowledged stamps per boot, in the order of the texts. */
      acks(): Map<string, number> {
        read();
        const m = new Map<string, number>();
        for (const s of texts().flatMap(acknowledgedStamps)) m.set(s.bootId, Math.max(m.get(s.bootId) ?? 0, s.counter));
        return m;
      },
      stop: () => { read(); clearInterval(timer); timers.delete(timer); },
    };
  }

  /** One scenario; after a failed one the later ones fail at once instead of running on a broken cluster. */
  function scenario(name: string, fn: (t: TestContext) => Promise<void>, timeoutMs = 10 * 60_000): void {
    it(name, { timeout: timeoutMs }, async (t) => {
      if (broken) throw new Error('not run: an earlier scenario failed');
      const started = Date.now();
      try {
        await fn(t);
      } catch (err) {
        broken = true;
        throw err;
      } finally {
        faults?.clear();
        t.diagnostic(`${name}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
      }
    });
  }

  async function removeLeftovers(): Promise<void> {
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith(`awan-${prefix}-`)) continue;
      const old = join(tmpdir(), name);
      await killAll(processesWith(`${old}/`).map((p) => p.pid));
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
    net = await createTestNetwork(prefix, HOSTS);
    faults = createFaults(net);
    url = `http://${net.bridgeAddress}:${PORT}`;
  });

  after(async () => {
    for (const t of timers) clearInterval(t);
    try {
      faults?.clear();
    } catch (err) {
      console.error(err);
    }
    // Agents first, so that nothing starts a QEMU while the others go; SIGCONT first, a stopped process cannot die.
    for (const name of [...HOSTS, 'control']) {
      const pid = children.get(name)?.pid;
      if (pid) try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ }
      await stopChild(name, 'SIGKILL');
    }
    if (dir) await killAll(processesWith(`${dir}/`).map((p) => p.pid));
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

  it('three QEMU hosts join a control with short host leases', { timeout: 180_000 }, async () => {
    startControl();
    await login();
    for (const h of HOSTS) {
      const join = await api<{ token: string }>('POST', '/api/v1/hosts/join-tokens');
      assert.equal(join.status, 201, JSON.stringify(join.body));
      startAgent(h, join.body.token);
    }
    await until(allReady, { timeoutMs: 120_000, what: 'three hosts ready', ...POLL });
    const img = await api('POST', '/api/v1/images', {
      name: 'stamp-guest', format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: `${guest.cmdline} ${stampSwitch('/dev/vda')}`,
    });
    assert.equal(img.status, 201, JSON.stringify(img.body));
  });

  let previousVm = '';

  /** Where the guest's disk is now: the shared pool, or (replicated) the local pool of the host holding it. */
  async function diskOf(vmId: string): Promise<string> {
    const volumes = (await api<{ items: any[] }>('GET', `/api/v1/volumes?vm=${vmId}`)).body.items;
    assert.equal(volumes.length, 1, JSON.stringify(volumes));
    const pool = (await api('GET', `/api/v1/pools/${volumes[0].poolId}`)).body;
    return join(pool.path, volumes[0].name);
  }

  /** Until the guest's replicated disk has a copy in step on a host other than `not`; that host's name. */
  async function syncedCopy(vmId: string, not: string): Promise<string> {
    return until(async () => {
      const [v] = (await api<{ items: any[] }>('GET', `/api/v1/volumes?vm=${vmId}`)).body.items;
      const on = v?.replica?.state === 'synced' ? await hostName(v.replica.hostId) : undefined;
      return on && on !== not ? on : undefined;
    }, { timeoutMs: 180_000, what: 'a synced copy of the guest\'s disk', ...POLL });
  }

  /** A fresh HA guest stamping its disk, and where it runs; the previous scenario's guest is stopped first. */
  async function stampingVm(name: string, storage: 'shared' | 'replicated' = 'shared') {
    if (previousVm) {
      const stop = await api('POST', `/api/v1/vms/${previousVm}/stop`, {});
      if (stop.status === 202) await waitTask(stop.body.task.id);
      await until(() => qemusOf(previousVm).length === 0, { timeoutMs: 60_000, what: `the previous guest's QEMU gone` });
    }
    const res = await api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 128, image: 'stamp-guest', ha: true, diskGiB: 1, storage });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const id: string = res.body.vm.id;
    previousVm = id;
    const task = await waitTask(res.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const vm = await vmOf(id);
    assert.equal(vm.phase, 'running');
    const host = await hostName(vm.hostId);
    assert.ok(host && HOSTS.includes(host), `the guest runs on one of our hosts (${vm.hostId})`);
    const disk = await diskOf(id);
    const home = storage === 'shared' ? poolDir() : join(hostDir(host), 'local-pool');
    assert.ok(disk.startsWith(`${home}/`) && existsSync(disk), `the guest's disk ${disk} is in ${home}`);
    const consoles = collectConsoles(id);
    const firstBoot = await until(() => {
      const acks = [...consoles.acks()];
      return acks.length === 1 && acks[0][1] >= STAMPS_BEFORE ? acks[0][0] : undefined;
    }, { timeoutMs: 180_000, what: `${STAMPS_BEFORE} stamps on ${host}'s console` });
    const copyOn = storage === 'replicated' ? await syncedCopy(id, host) : undefined;
    return { id, host, copyOn, consoles, firstBoot, qemu: qemusOf(id) };
  }

  /**
   * Waits until the guest runs on a host other than `from` (API and process) and a new boot stamps there;
   * notes when `from` was declared failed and when the guest ran elsewhere.
   */
  async function failedOver(vmId: string, from: string, consoles: ReturnType<typeof collectConsoles>, firstBoot: string, t0: number) {
    let failedSeenMs = 0;
    let failedAtMs = 0;
    let runningMs = 0;
    const vm = await until(async () => {
      if (!failedSeenMs) {
        const h = (await hosts()).find((x) => x.name === from);
        if (h?.state === 'failed') {
          failedSeenMs = Date.now();
          failedAtMs = h.failedAt ? Date.parse(h.failedAt) : failedSeenMs;
        }
      }
      const v = await vmOf(vmId);
      const on = v.hostId ? await hostName(v.hostId) : undefined;
      if (v.phase === 'running' && on && on !== from) {
        runningMs ||= Date.now();
        return { ...v, on };
      }
      return undefined;
    }, { timeoutMs: 300_000, what: `the guest running on a host other than ${from}`, ...POLL });
    const secondBoot = await until(() => {
      const acks = [...consoles.acks()].filter(([b]) => b !== firstBoot);
      return acks.length >= 1 && acks.at(-1)![1] >= 10 ? acks.at(-1)![0] : undefined;
    }, { timeoutMs: 180_000, what: `the guest stamping again on ${vm.on}` });
    return { vm, on: vm.on as string, secondBoot, failedSeenMs, failedAtMs: failedAtMs || failedSeenMs, runningMs, t0 };
  }

  /** The end state every scenario proves: running once, never two QEMUs, one writer at a time, nothing lost. */
  async function proveOneWriter(t: TestContext, s: { id: string; consoles: ReturnType<typeof collectConsoles> }, watch: QemuWatch, minBoots: number) {
    const vm = await until(async () => {
      const v = await vmOf(s.id);
      return v.phase === 'running' ? v : undefined;
    }, { timeoutMs: 120_000, what: 'the guest running', ...POLL });
    const on = await hostName(vm.hostId);
    const then = s.consoles.acks();
    await until(() => [...s.consoles.acks()].some(([boot, n]) => n >= (then.get(boot) ?? 0) + STAMPS_AFTER), { timeoutMs: 180_000, what: `${STAMPS_AFTER} more stamps of the running boot` });
    watch.stop();
    const qs = qemusOf(s.id);
    assert.equal(qs.length, 1, `exactly one QEMU of the guest at the end: ${JSON.stringify(qs)}`);
    assert.equal(qs[0].host, on, 'it runs where the API says');
    assert.equal(watch.maxAtOnce, 1, `never two QEMUs at once (${watch.samples} samples):\n${watch.overlaps.slice(0, 10).join('\n')}`);
    assert.ok(watch.samples > 20, `the QEMUs were sampled (${watch.samples})`);
    // Stopped, so the disk is read whole and flushed; the consoles are read before it.
    const stop = await api('POST', `/api/v1/vms/${s.id}/stop`, {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await waitTask(stop.body.task.id)).state, 'succeeded');
    await until(() => qemusOf(s.id).length === 0, { timeoutMs: 60_000, what: 'the guest stopped' });
    s.consoles.stop();
    // The disk as it is now: for a replicated one, the copy that became the disk when the guest failed over.
    const disk = await diskOf(s.id);
    t.diagnostic(`the disk: ${disk}; volume: ${JSON.stringify((await api('GET', `/api/v1/volumes?vm=${s.id}`)).body.items[0])}`);
    const report = verifyStamps({ disk, consoles: s.consoles.texts(), format: 'qcow2', maxBytes: 8 << 20 });
    t.diagnostic(report.summary);
    assert.equal(report.ok, true, report.summary);
    assert.ok(report.boots.length >= minBoots, `at least ${minBoots} boot(s) on the disk:\n${report.summary}`);
    assert.ok(report.runs.every((r) => r.acknowledged > 0), `every boot on the disk was seen acknowledging:\n${report.summary}`);
    return { report, on };
  }

  function record(name: string, f: { failedAtMs: number; runningMs: number; t0: number }, watch: QemuWatch, oldPid: number, extra: Record<string, unknown> = {}) {
    const old = watch.seen.get(oldPid);
    const fresh = [...watch.seen.entries()].filter(([pid]) => pid !== oldPid).map(([, s]) => s).sort((a, b) => a.firstMs - b.firstMs)[0];
    const s = (ms: number) => Math.round(ms) / 1000;
    const fig = {
      scenario: name,
      faultToFailedS: s(f.failedAtMs - f.t0),
      failedToRestartedQemuS: fresh ? s(fresh.firstMs - f.failedAtMs) : null,
      failedToRunningS: s(f.runningMs - f.failedAtMs),
      faultToOldQemuLastSeenS: old ? s(old.lastMs - f.t0) : null,
      oldLastSeenToNewFirstSeenS: old && fresh ? s(fresh.firstMs - old.lastMs) : null,
      qemus: [...watch.seen.values()].map((q) => `${q.host} ${s(q.firstMs - f.t0)}..${s(q.lastMs - f.t0)}`),
      ...extra,
    };
    figures.push(fig);
    console.log(`ha-faults ${JSON.stringify(fig)}`);
    if (old && fresh) assert.ok(old.lastMs < fresh.firstMs, `the old QEMU was last seen at ${old.lastMs}, the new one first at ${fresh.firstMs}`);
  }

  /** On replicated storage, the guest restarted where its disk's copy was, and a new copy is made on the third host. */
  async function checkCopies(s: { id: string; host: string; copyOn?: string }, on: string): Promise<Record<string, unknown>> {
    if (!s.copyOn) return {};
    assert.equal(on, s.copyOn, 'it restarted where the copy of its disk was');
    assert.ok((await diskOf(s.id)).startsWith(`${join(hostDir(on), 'local-pool')}/`), 'the copy became the disk');
    const third = await syncedCopy(s.id, on);
    assert.ok(third !== s.host && third !== on, `the new copy is on the third host, not ${third}`);
    return { newCopyOn: third };
  }

  for (const storage of ['shared', 'replicated'] as const) {
    const on = storage === 'shared' ? 'on a shared pool' : 'on replicated storage';
    const tag = (name: string) => (storage === 'shared' ? name : `replicated-${name}`);

    scenario(`${on}, a host killed outright: the guest restarts elsewhere, and the host comes back without it`, async (t) => {
      const s = await stampingVm(tag('ha-killed'), storage);
      const [old] = s.qemu;
      const watch = watchQemus(s.id);
      const t0 = Date.now();
      const killed = await faults!.killHost(s.host);
      assert.ok(killed.includes(old.pid), 'the guest\'s QEMU was among the killed processes');
      const f = await failedOver(s.id, s.host, s.consoles, s.firstBoot, t0);
      const copies = await checkCopies(s, f.on);
      startAgent(s.host);
      await until(allReady, { timeoutMs: 120_000, what: `${s.host} ready again`, ...POLL });
      const end = await proveOneWriter(t, s, watch, 2);
      assert.equal(end.on, f.on);
      assert.equal(processesWith('qemu-system', `${hostDir(s.host)}/`).length, 0, `${s.host} runs no QEMU after it came back`);
      record(tag('host-killed'), f, watch, old.pid, copies);
    });

    scenario(`${on}, a host cut from control only (it still reaches its disk): it stops the guest itself before the restart elsewhere, and returns ready`, async (t) => {
      const s = await stampingVm(tag('ha-cut'), storage);
      const [old] = s.qemu;
      const watch = watchQemus(s.id);
      const t0 = Date.now();
      const cut = faults!.cutFromControl(s.host);
      const f = await failedOver(s.id, s.host, s.consoles, s.firstBoot, t0);
      assert.ok(gone(old.pid), 'the cut-off host stopped its copy');
      const fenced = join(hostDir(s.host), 'fence', 'fenced', s.id);
      assert.ok(existsSync(fenced), `${s.host} recorded that it fenced the guest`);
      const copies = await checkCopies(s, f.on);
      faults!.restore(cut);
      await until(allReady, { timeoutMs: 120_000, what: `${s.host} ready again`, ...POLL });
      await proveOneWriter(t, s, watch, 2);
      record(tag('cut-from-control'), f, watch, old.pid, { fencedBy: readFileSync(fenced, 'utf8').trim(), ...copies });
    });

    scenario(`${on}, the agent hung: the watchdog kills the guest, which restarts elsewhere; the agent resumes without a second copy`, async (t) => {
      const s = await stampingVm(tag('ha-hung'), storage);
      const [old] = s.qemu;
      const agentPid = children.get(s.host)!.pid!;
      const watchdogPid = Number(readFileSync(join(hostDir(s.host), 'fence', 'watchdog.pid'), 'utf8'));
      assert.ok(!gone(watchdogPid), 'the host\'s watchdog runs');
      const watch = watchQemus(s.id);
      const t0 = Date.now();
      const hang = faults!.hang(agentPid);
      const f = await failedOver(s.id, s.host, s.consoles, s.firstBoot, t0);
      assert.ok(gone(old.pid), 'the hung host\'s copy is gone');
      const fenced = join(hostDir(s.host), 'fence', 'fenced', s.id);
      const why = readFileSync(fenced, 'utf8');
      assert.match(why, /watchdog/, 'the watchdog, not the hung agent, stopped the guest');
      const copies = await checkCopies(s, f.on);
      faults!.restore(hang);
      await until(allReady, { timeoutMs: 120_000, what: `${s.host} ready again`, ...POLL });
      await proveOneWriter(t, s, watch, 2);
      record(tag('agent-hung'), f, watch, old.pid, { fencedBy: why.trim(), ...copies });
    });

    scenario(`${on}, a flapping link to control, each cut shorter than the lease: never two writers, at most one restart`, async (t) => {
      const s = await stampingVm(tag('ha-flap'), storage);
      const [old] = s.qemu;
      const watch = watchQemus(s.id);
      const t0 = Date.now();
      let failed = 0;
      const states = setInterval(() => void hosts().then((hs) => { if (hs.find((h) => h.name === s.host)?.state === 'failed') failed++; }).catch(() => undefined), 250);
      timers.add(states);
      try {
        await faults!.flap(s.host, { times: 8, downMs: 1200, upMs: 1500 });
      } finally {
        clearInterval(states);
        timers.delete(states);
      }
      await until(allReady, { timeoutMs: 120_000, what: 'every host ready after the flapping', ...POLL });
      const { report, on: endedOn } = await proveOneWriter(t, s, watch, 1);
      const restarts = report.boots.length - 1;
      assert.ok(restarts <= 1, `restarted at most once:\n${report.summary}`);
      const qemus = watch.seen.size;
      assert.equal(qemus, restarts + 1, `one QEMU per boot (${qemus} QEMUs, ${report.boots.length} boots)`);
      const fig = { scenario: tag('flapping-link'), restarts, hostSeenFailed: failed > 0, endedOn, startedOn: s.host, flapSeconds: (Date.now() - t0) / 1000 };
      figures.push(fig);
      console.log(`ha-faults ${JSON.stringify(fig)}`);
      if (restarts === 0) assert.ok(!gone(old.pid) || endedOn === s.host, 'without a restart the same guest runs on');
    });

    scenario(`${on}, control killed in the middle of a failover and started again on its database: the guest runs once`, async (t) => {
      const s = await stampingVm(tag('ha-control'), storage);
      const [old] = s.qemu;
      const watch = watchQemus(s.id);
      const t0 = Date.now();
      await faults!.killHost(s.host);
      // The middle of the failover: control has declared the host failed and placed the guest elsewhere.
      await until(async () => {
        const v = await vmOf(s.id);
        if (v.hostId && (await hostName(v.hostId)) !== s.host) return true;
        return undefined;
      }, { timeoutMs: 120_000, what: 'control placing the guest on another host', intervalMs: 50 });
      const vmThen = await vmOf(s.id);
      await stopChild('control', 'SIGKILL');
      const restartT = Date.now();
      startControl();
      await login();
      const controlBackS = (Date.now() - restartT) / 1000;
      const f = await failedOver(s.id, s.host, s.consoles, s.firstBoot, t0);
      const copies = await checkCopies(s, f.on);
      startAgent(s.host);
      await until(allReady, { timeoutMs: 120_000, what: 'every host ready after control restarted', ...POLL });
      await proveOneWriter(t, s, watch, 2);
      assert.equal(processesWith('qemu-system', `${hostDir(s.host)}/`).length, 0, `${s.host} runs no QEMU after it came back`);
      const fresh = [...watch.seen.keys()].filter((p) => p !== old.pid);
      t.diagnostic(`QEMUs after the original: ${fresh.length}`);
      record(tag('control-restarted'), { ...f, failedAtMs: f.failedAtMs || f.t0 }, watch, old.pid, {
        controlKilledWithGuestIn: vmThen.phase, controlBackS, qemusAfterOriginal: fresh.length, ...copies,
      });
    });
  }

  scenario('on replicated storage, a drain moves the guest live onto its copy, which becomes its disk: one boot, nothing lost', async (t) => {
    const s = await stampingVm('replicated-drain', 'replicated');
    // Earlier scenarios' guests, stopped, keep their disks on their hosts, which a drain cannot move: gone first.
    for (const v of (await api<{ items: any[] }>('GET', '/api/v1/vms?limit=100')).body.items) {
      if (v.id === s.id) continue;
      const del = await api('DELETE', `/api/v1/vms/${v.id}`);
      assert.equal(del.status, 202, JSON.stringify(del.body));
      assert.equal((await waitTask(del.body.task.id)).state, 'succeeded');
    }
    const oldDisk = await diskOf(s.id);
    const t0 = Date.now();
    const drain = await api('POST', `/api/v1/hosts/${s.host}/drain`);
    assert.equal(drain.status, 202, JSON.stringify(drain.body));
    const task = await waitTask(drain.body.task.id);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    const drainS = (Date.now() - t0) / 1000;
    const on = await hostName((await vmOf(s.id)).hostId);
    assert.equal(on, s.copyOn, 'it moved onto the host of its copy');
    assert.ok((await diskOf(s.id)).startsWith(`${join(hostDir(on!), 'local-pool')}/`), 'the copy is its disk');
    assert.ok(!existsSync(oldDisk), `${s.host} deleted the old disk`);
    const third = await syncedCopy(s.id, on!);
    assert.notEqual(third, s.host, 'no new copy on the host in maintenance');
    const moved = (await api<{ items: any[] }>('GET', `/api/v1/events?object=${s.id}`)).body.items.find((e) => e.type === 'vm.migrated');
    assert.ok(moved, 'a vm.migrated event');
    // The same boot stamps on, on the new host.
    const then = s.consoles.acks();
    await until(() => (s.consoles.acks().get(s.firstBoot) ?? 0) >= (then.get(s.firstBoot) ?? 0) + STAMPS_AFTER, { timeoutMs: 180_000, what: 'the guest stamping on after the move' });
    const qs = qemusOf(s.id);
    assert.deepEqual(qs.map((q) => q.host), [on], 'one QEMU of the guest, where the API says');
    const stop = await api('POST', `/api/v1/vms/${s.id}/stop`, {});
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await waitTask(stop.body.task.id)).state, 'succeeded');
    await until(() => qemusOf(s.id).length === 0, { timeoutMs: 60_000, what: 'the guest stopped' });
    s.consoles.stop();
    const report = verifyStamps({ disk: await diskOf(s.id), consoles: s.consoles.texts(), format: 'qcow2', maxBytes: 8 << 20 });
    t.diagnostic(report.summary);
    assert.equal(report.ok, true, report.summary);
    assert.equal(report.boots.length, 1, `one boot: it moved, it did not restart:\n${report.summary}`);
    assert.equal((await api('POST', `/api/v1/hosts/${s.host}/activate`)).status, 200);
    await until(allReady, { timeoutMs: 60_000, what: 'every host ready again', ...POLL });
    const fig = { scenario: 'replicated-drain', drainS, newCopyOn: third, ...moved.data };
    figures.push(fig);
    console.log(`ha-faults ${JSON.stringify(fig)}`);
  });
});
