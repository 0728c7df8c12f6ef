// What the QEMU driver does beyond the shared contract: restarts, crashes, console, guest-visible memory, stops.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DriverEvent, DriverVmStatus, HypervisorDriver } from '../types.ts';
import { createQemuDriver, type QemuDriverOptions } from './index.ts';
import { freePort } from './migrate.ts';
import { tapName } from './network.ts';
import { vmPaths } from './paths.ts';
import { QmpClient } from './qmp.ts';
import { guestSpec, trackDrivers, lastGuestMemory, lastGuestUptime, requireGuest, tempDir } from './test-support.ts';
import { until } from '../../../test/until.ts';

const root = tempDir('qd');
const drivers = trackDrivers(root);
let dirCount = 0;

async function newDriver(dataDir?: string, extra: Partial<QemuDriverOptions> = {}): Promise<{ driver: HypervisorDriver; dataDir: string }> {
  requireGuest();
  const dir = dataDir ?? join(root.path, `d${dirCount++}`);
  const driver = await createQemuDriver({ dataDir: dir, address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/, ...extra });
  drivers.add(driver);
  return { driver, dataDir: dir };
}

function stateEvents(driver: HypervisorDriver, id: string): DriverVmStatus[] {
  const seen: DriverVmStatus[] = [];
  driver.subscribe((e: DriverEvent) => {
    if (e.type === 'vm-state' && e.vm.id === id) seen.push(e.vm);
  });
  return seen;
}


const T = { timeout: 120_000 };

describe('qemu driver', () => {
  it('probes the accelerator, caches the answer, and lets AWAN_ACCEL override it', T, async () => {
    const g = requireGuest();
    const probeCacheFile = join(root.path, 'probe-cache.json');
    // Time enough for the TCG half of the probe on a busy machine: where Linux hangs under KVM, it runs too.
    const { driver, dataDir } = await newDriver(undefined, { probeCacheFile, probeTimeoutMs: 30_000 });
    const facts = await driver.facts();
    assert.ok(facts.accelerator === 'kvm' || facts.accelerator === 'tcg');
    // Kept with how it was found: the real kernel booted under KVM, or booted only under TCG, or there is no KVM.
    const evidence = facts.accelerator === 'kvm' ? ['linux-booted'] : ['linux-failed-under-kvm', 'no-kvm'];
    for (const file of [join(dataDir, 'accel.json'), probeCacheFile]) {
      const cached = JSON.parse(readFileSync(file, 'utf8')) as { accel: string; evidence: string };
      assert.equal(cached.accel, facts.accelerator, file);
      assert.ok(evidence.includes(cached.evidence), `${file}: ${cached.evidence}`);
    }
    // A kernel whose marker shows under neither accelerator proves nothing: TCG for now, and nothing is kept.
    // (A stand-in KVM device: on a machine without KVM the probe would not boot anything at all.)
    const slowCache = join(root.path, 'probe-cache-2.json');
    const kvmDevice = join(root.path, 'kvm-device');
    writeFileSync(kvmDevice, '');
    const { driver: slow, dataDir: slowDir } = await newDriver(undefined, {
      probeCacheFile: slowCache,
      kvmDevice,
      probeGuest: { kernelPath: g.kernelPath, initrdPath: g.initrdPath, bootedMarker: 'NEVER-PRINTED' },
      probeTimeoutMs: 1500,
    });
    assert.equal((await slow.facts()).accelerator, 'tcg');
    assert.equal(existsSync(slowCache), false);
    assert.equal(existsSync(join(slowDir, 'accel.json')), false);
    const saved = process.env.AWAN_ACCEL;
    process.env.AWAN_ACCEL = 'tcg';
    try {
      const { driver: forced } = await newDriver(undefined, { probeCacheFile: join(root.path, 'probe-cache-3.json') });
      assert.equal((await forced.facts()).accelerator, 'tcg');
    } finally {
      if (saved === undefined) delete process.env.AWAN_ACCEL;
      else process.env.AWAN_ACCEL = saved;
    }
  });

  it('a new driver instance re-attaches to VMs that kept running', T, async () => {
    const { driver, dataDir } = await newDriver();
    const spec = guestSpec('keep');
    await driver.start(spec);
    const pid = readFileSync(join(dataDir, 'vms', 'keep', 'qemu.pid'), 'utf8').trim();
    await driver.close();
    drivers.delete(driver);

    const { driver: again } = await newDriver(dataDir);
    const listed = await again.list();
    assert.deepEqual(listed.map((v) => [v.id, v.state]), [['keep', 'running']]);
    assert.equal(readFileSync(join(dataDir, 'vms', 'keep', 'qemu.pid'), 'utf8').trim(), pid);
    // QMP and the console work through the new instance.
    await again.consoleWrite('keep', 'echo reattached-$((40+2))\n');
    await until(async () => (await again.consoleHistory('keep')).includes('reattached-42'), { timeoutMs: 30_000, what: 'echo' });
    await again.stop('keep', { force: true });
    assert.equal((await again.status('keep')).state, 'stopped');
  });

  it('reports a crash when QEMU dies under the VM', T, async () => {
    const { driver, dataDir } = await newDriver();
    const events = stateEvents(driver, 'crashy');
    await driver.start(guestSpec('crashy'));
    const pid = Number(readFileSync(join(dataDir, 'vms', 'crashy', 'qemu.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    const crashed = await until(() => events.find((e) => e.state === 'crashed'), { timeoutMs: 30_000, what: 'a crashed event' });
    assert.match(crashed.reason ?? '', /SIGKILL|unexpectedly/);
    assert.equal((await driver.status('crashy')).state, 'crashed');
    // A crashed VM can be started again.
    assert.equal((await driver.start(guestSpec('crashy'))).state, 'running');
  });

  it('reports a guest kernel panic as a crash', T, async () => {
    const { driver } = await newDriver();
    const events = stateEvents(driver, 'panicky');
    await driver.start(guestSpec('panicky'));
    await driver.consoleWrite('panicky', 'echo c > /proc/sysrq-trigger\n');
    const crashed = await until(() => events.find((e) => e.state === 'crashed'), { timeoutMs: 30_000, what: 'a crashed event' });
    assert.match(crashed.reason ?? '', /Kernel panic - not syncing/);
    // QEMU itself still runs the dead guest; a forced stop ends it.
    await driver.stop('panicky', { force: true });
    assert.equal((await driver.status('panicky')).state, 'stopped');
  });

  it('sends keystrokes to the serial console and streams its output', T, async () => {
    const { driver } = await newDriver();
    const output: string[] = [];
    driver.subscribe((e) => {
      if (e.type === 'console' && e.vmId === 'tty') output.push(e.data);
    });
    await driver.start(guestSpec('tty'));
    await driver.consoleWrite('tty', 'echo console-$((6*7))\n');
    await until(() => output.join('').includes('console-42'), { timeoutMs: 30_000, what: 'echo on the console' });
    const history = await driver.consoleHistory('tty');
    assert.ok(history.includes('AWAN-BOOTED'), 'boot output is in the history');
    assert.ok(history.includes('console-42'));
  });

  it('balloon and virtio-mem change the memory the guest itself sees', T, async () => {
    const { driver } = await newDriver();
    await driver.start(guestSpec('mem'));
    const guest = async (): Promise<{ totalMiB: number; freeMiB: number } | undefined> =>
      lastGuestMemory(await driver.consoleHistory('mem'));
    const before = await until(guest, { timeoutMs: 30_000, what: 'a memory report' });
    const used = await until(async () => (await driver.status('mem')).memoryUsedMiB, { timeoutMs: 30_000, what: 'balloon stats' });
    assert.ok(used > 0 && used < 256, `guest uses ${used} MiB`);

    // With deflate-on-oom the guest keeps ballooned pages in its total (it may take them back), so they show as not free.
    // setMemory answers once the guest holds the new size, not when the request was sent.
    assert.equal((await driver.setMemory('mem', 192)).memoryActualMiB, 192);
    await until(async () => ((await guest())?.freeMiB ?? Infinity) <= before.freeMiB - 60, { timeoutMs: 30_000, what: 'the guest to lose 64 MiB' });
    assert.equal((await driver.setMemory('mem', 448)).memoryActualMiB, 448);
    await until(async () => ((await guest())?.totalMiB ?? 0) >= before.totalMiB + 180, { timeoutMs: 30_000, what: 'the guest to gain 192 MiB' });
    assert.equal((await driver.status('mem')).memoryActualMiB, 448);
    await assert.rejects(driver.setMemory('mem', 449), { name: 'DriverError', code: 'UNSUPPORTED', message: /steps of 2 MiB/ });
    await assert.rejects(driver.setMemory('mem', 16), { name: 'DriverError', code: 'INSUFFICIENT_MEMORY' });
  });

  it('graceful stop powers the guest off, and forces a guest that ignores the button', T, async () => {
    const { driver } = await newDriver();
    const events = stateEvents(driver, 'polite');
    await driver.start(guestSpec('polite'));
    await driver.stop('polite', { timeoutMs: 60_000 });
    assert.ok((await driver.consoleHistory('polite')).includes('AWAN-POWEROFF'), 'the guest handled the power button');
    assert.equal(events.at(-1)?.state, 'stopped');

    // Without ACPI the guest has no power button: only the fallback can stop it.
    const g = requireGuest();
    const deaf = guestSpec('deaf', { boot: { kind: 'kernel', kernelPath: g.kernelPath, initrdPath: g.initrdPath, cmdline: `${g.cmdline} acpi=off` } });
    await driver.start(deaf);
    await driver.stop('deaf', { timeoutMs: 1000 });
    assert.equal((await driver.status('deaf')).state, 'stopped');
    assert.ok(!(await driver.consoleHistory('deaf')).includes('AWAN-POWEROFF'));
  });

  it('a guest that powers itself off is stopped, not crashed', T, async () => {
    const { driver } = await newDriver();
    const events = stateEvents(driver, 'selfoff');
    await driver.start(guestSpec('selfoff'));
    await driver.consoleWrite('selfoff', 'poweroff -f\n');
    const stopped = await until(() => events.find((e) => e.state === 'stopped'), { timeoutMs: 30_000, what: 'a stopped event' });
    assert.equal(stopped.reason, 'guest powered off');
  });

  it('delete removes the VM directory but keeps disks outside it', T, async () => {
    const { driver, dataDir } = await newDriver();
    const disk = join(root.path, 'kept.qcow2');
    await driver.start(guestSpec('gone', { disks: [{ path: disk, format: 'qcow2', sizeMiB: 64 }] }));
    await driver.delete('gone');
    assert.equal(existsSync(join(dataDir, 'vms', 'gone')), false);
    assert.equal(existsSync(disk), true);
  });

  it('bridge NICs get a tap on the bridge; a missing bridge falls back to user networking', T, async (t) => {
    if (process.getuid?.() !== 0) return t.skip('creating a bridge needs root');
    const bridge = `awbr${process.pid % 100000}`;
    execFileSync('ip', ['link', 'add', bridge, 'type', 'bridge']);
    try {
      const { driver, dataDir } = await newDriver();
      const spec = guestSpec('bridged', {
        nics: [
          { mode: 'bridge', bridge, mac: '52:54:00:aa:00:01' },
          { mode: 'bridge', bridge: 'no-such-br0', mac: '52:54:00:aa:00:02' },
        ],
      });
      await driver.start(spec);
      const tap = tapName(dataDir, 'bridged', 0);
      assert.equal(readFileSync(`/sys/class/net/${tap}/master/uevent`, 'utf8').includes(`INTERFACE=${bridge}`), true);
      assert.equal(existsSync(`/sys/class/net/${tapName(dataDir, 'bridged', 1)}`), false);
      // Both NICs reach the guest.
      await driver.consoleWrite('bridged', 'ls /sys/class/net | tr "\\n" " "; echo; echo nics-$((1+1))\n');
      await until(async () => (await driver.consoleHistory('bridged')).includes('nics-2'), { timeoutMs: 30_000, what: 'nic list' });
      assert.match(await driver.consoleHistory('bridged'), /eth0 eth1/);
      await driver.delete('bridged');
      assert.equal(existsSync(`/sys/class/net/${tap}`), false);
    } finally {
      execFileSync('ip', ['link', 'del', bridge]);
    }
  });

  it('VMs outlive the agent process that started them', T, async () => {
    requireGuest();
    const dataDir = join(root.path, 'agent');
    // A separate process plays the agent: it starts a VM, says so, and is then killed without any cleanup.
    const code = `
      const { createQemuDriver } = await import(${JSON.stringify(join(import.meta.dirname, 'index.ts'))});
      const { guestSpec } = await import(${JSON.stringify(join(import.meta.dirname, 'test-support.ts'))});
      const d = await createQemuDriver({ dataDir: ${JSON.stringify(dataDir)}, guestReadyPattern: /AWAN-BOOTED/ });
      await d.start(guestSpec('survivor'));
      console.log('STARTED');
      setInterval(() => {}, 1000);
    `;
    const agent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    agent.stdout.on('data', (c: Buffer) => (out += c.toString()));
    try {
      await until(() => out.includes('STARTED') || agent.exitCode !== null, { timeoutMs: 60_000, what: 'the agent to start a VM' });
      assert.ok(out.includes('STARTED'), 'the agent process failed');
    } finally {
      agent.kill('SIGKILL');
    }
    await until(() => agent.exitCode !== null || agent.signalCode !== null, { what: 'the agent to die' });

    const { driver } = await newDriver(dataDir);
    const vm = await driver.status('survivor');
    assert.equal(vm.state, 'running');
    await driver.consoleWrite('survivor', 'echo alive-$((3*3))\n');
    await until(async () => (await driver.consoleHistory('survivor')).includes('alive-9'), { timeoutMs: 30_000, what: 'echo' });
  });

  it('migrates live or with the guest paused for the copy, as each host is told, and the guest carries on', T, async () => {
    const { driver: live } = await newDriver(undefined, { migrationMode: 'live' });
    const { driver: paused } = await newDriver(undefined, { migrationMode: 'paused' });
    const spec = guestSpec('mover');
    await live.start(spec);
    const lastUptime = async (d: HypervisorDriver) => lastGuestUptime(await d.consoleHistory('mover')) ?? NaN;
    for (const [from, to, mode] of [[live, paused, 'live'], [paused, live, 'paused']] as const) {
      await until(async () => (await lastUptime(from)) > 0, { timeoutMs: 30_000, what: 'the uptime counter' });
      const before = await lastUptime(from);
      const result = await from.migrate('mover', await to.prepareIncoming(spec));
      assert.equal(result.mode, mode);
      assert.ok(result.totalMs > 0, JSON.stringify(result));
      // A paused copy keeps the guest from running the whole time; a live one only at the handover.
      if (mode === 'paused') assert.equal(result.downtimeMs, result.totalMs);
      else assert.ok(result.downtimeMs < result.totalMs, JSON.stringify(result));
      // The destination starts the guest as soon as it has it, even one paused for the copy.
      await until(async () => (await to.status('mover')).state === 'running', { timeoutMs: 5000, intervalMs: 10, what: 'the destination to run the guest by itself' });
      assert.equal((await to.completeIncoming('mover')).state, 'running');
      // The guest runs there (a paused guest would not count on) and carries its state (no reboot).
      await until(async () => (await lastUptime(to)) > before + 1, { timeoutMs: 30_000, what: `the uptime counting on after the ${mode} migration` });
      assert.deepEqual(await from.list(), []);
    }
  });

  it('a guest left paused by a migration that failed while no agent watched stays paused on re-attach, and a start resumes it', T, async () => {
    const { driver, dataDir } = await newDriver();
    await driver.start(guestSpec('stranded'));
    await driver.close();
    drivers.delete(driver);
    // What a paused migration does before the agent dies and the destination goes away.
    const qmp = await QmpClient.connect(vmPaths(dataDir, 'stranded').qmp);
    try {
      await qmp.call('stop', undefined);
      await qmp.call('migrate', { uri: `tcp:127.0.0.1:${await freePort('127.0.0.1')}` }).catch(() => undefined);
      await until(async () => (await qmp.call('query-migrate', undefined)).status === 'failed', { what: 'the migration to fail' });
      assert.equal((await qmp.call('query-status', undefined)).status, 'paused');
    } finally {
      qmp.close();
    }
    const { driver: again } = await newDriver(dataDir);
    const found = await again.status('stranded');
    assert.equal(found.state, 'paused', 'control decides whether this copy runs');
    assert.match(found.reason ?? '', /a start resumes it/);
    assert.equal((await again.start(guestSpec('stranded'))).state, 'running');
    await again.consoleWrite('stranded', 'echo resumed-$((6*7))\n');
    await until(async () => (await again.consoleHistory('stranded')).includes('resumed-42'), { timeoutMs: 30_000, what: 'echo' });
  });

  it('the guest swaps on a disk that carries a swap signature', T, async () => {
    const { driver } = await newDriver();
    const disk = join(root.path, 'swap.raw');
    writeFileSync(disk, swapImage(32));
    await driver.start(guestSpec('swapper', { disks: [{ path: disk, format: 'raw' }] }));
    await until(async () => /AWAN-SWAPON \/dev\/vda/.test(await driver.consoleHistory('swapper')), { timeoutMs: 30_000, what: 'swapon' });
    await until(async () => /swap=3\d{4}KiB/.test(await driver.consoleHistory('swapper')), { timeoutMs: 30_000, what: 'swap in the memory report' });
  });
});

/** A raw disk with a Linux swap header (what mkswap writes): version 1, the page count, label awan-swap. */
function swapImage(sizeMiB: number): Buffer {
  const page = 4096;
  const buf = Buffer.alloc(sizeMiB * 1024 * 1024);
  buf.writeUInt32LE(1, 1024); // version
  buf.writeUInt32LE(buf.length / page - 1, 1028); // last page
  buf.write('awan-swap', 1052, 'latin1'); // volume label, after nr_badpages and the uuid
  buf.write('SWAPSPACE2', page - 10, 'latin1');
  return buf;
}
