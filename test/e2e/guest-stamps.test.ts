// The stamping test guest and its verifier with real QEMU: a guest killed with SIGKILL and booted again on the
// same raw disk leaves two clean runs that hold every stamp it saw acknowledged; two QEMUs writing one disk at
// once (image locking turned off, here only) are caught.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import { guestSpec, requireGuest, tempDir } from '../../src/drivers/qemu/test-support.ts';
import type { DriverVmSpec, HypervisorDriver } from '../../src/drivers/types.ts';
import { killMentioning, pidsMentioning } from '../support/processes.ts';
import { acknowledgedStamps, stampSwitch, verifyStamps } from '../support/stamps.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const INSTALL = 'apt-get install qemu-system-x86 qemu-utils busybox-static cpio';
const BOOT_MS = 180_000;

/** Acknowledged stamps per boot id, in the order the boots first appear. */
function acksByBoot(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const s of acknowledgedStamps(text)) m.set(s.bootId, (m.get(s.bootId) ?? 0) + 1);
  return m;
}

function gone(pid: number): boolean {
  try {
    return /\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

describe('the stamping guest', { timeout: 15 * 60_000 }, () => {
  requireCommand('qemu-system-x86_64', INSTALL);
  requireCommand('qemu-img', INSTALL);
  const guest = requireGuest();
  const root = tempDir('stamps');
  const drivers: HypervisorDriver[] = [];
  const children: ChildProcess[] = [];
  after(async () => {
    for (const d of drivers) {
      for (const vm of await d.list().catch(() => [])) await d.delete(vm.id).catch(() => undefined);
      await d.close().catch(() => undefined);
    }
    for (const c of children) if (c.pid) try { process.kill(c.pid, 'SIGKILL'); } catch { /* gone */ }
    const left = killMentioning(root.path);
    await until(() => [...left, ...children.map((c) => c.pid ?? 0)].every((p) => p === 0 || gone(p)), { timeoutMs: 30_000, what: 'QEMU processes gone' }).catch(() => undefined);
    root.remove();
  });

  it('keeps every acknowledged stamp across a SIGKILL of QEMU and a new boot on the same raw disk', async (t) => {
    const driver = await createQemuDriver({ dataDir: join(root.path, 'host'), hostname: 'stamps', address: '127.0.0.1', accel: 'tcg', bootTimeoutMs: BOOT_MS });
    drivers.push(driver);
    const disk = join(root.path, 'stamps.raw');
    // The switch travels in the image's kernel command line, as control passes it to the driver.
    const spec: DriverVmSpec = guestSpec('stamper', {
      memoryMiB: 128,
      maxMemoryMiB: 128,
      nics: [],
      boot: { kind: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: `${guest.cmdline} ${stampSwitch('/dev/vda')}`, readyText: 'AWAN-BOOTED' },
      disks: [{ path: disk, format: 'raw', sizeMiB: 8 }],
    });
    let text = '';
    const unsubscribe = driver.subscribe((e) => {
      if (e.type === 'console' && e.vmId === spec.id) text += e.data;
    });
    t.after(unsubscribe);

    const bootAndStamp = async (boots: number) => {
      await driver.start(spec);
      return until(() => {
        const acks = [...acksByBoot(text).values()];
        return acks.length === boots && acks[boots - 1] >= 20 ? acks : undefined;
      }, { timeoutMs: BOOT_MS, intervalMs: 100, what: `20 stamps of boot ${boots} on the console (${/AWAN-STAMP-\w+.*/.exec(text)?.[0] ?? 'none yet'})` });
    };
    const killQemu = async () => {
      const [pid] = pidsMentioning(join(root.path, 'host'), 'qemu-system');
      assert.ok(pid, 'the guest has a QEMU');
      process.kill(pid, 'SIGKILL');
      await until(() => gone(pid), { timeoutMs: 30_000, what: `QEMU ${pid} gone` });
      await until(async () => (await driver.status(spec.id)).state !== 'running', { timeoutMs: 30_000, what: 'the driver seeing QEMU die' });
    };

    await bootAndStamp(1);
    assert.doesNotMatch(text, /AWAN-STAMP-ERROR/);
    await killQemu();
    await bootAndStamp(2);
    await killQemu();

    const report = verifyStamps({ disk, consoles: text });
    t.diagnostic(report.summary);
    assert.equal(report.ok, true, report.summary);
    assert.equal(report.boots.length, 2, report.summary);
    const [first, second] = report.runs;
    assert.ok(first.acknowledged >= 20 && second.acknowledged >= 20, report.summary);
    assert.equal(second.firstSlot, first.lastSlot + 1, 'the second boot appends right after the first one\'s last record');
    assert.deepEqual([...acksByBoot(text).keys()], report.boots, 'the disk holds the boots in the order the console saw them');
    // The normal guest behaviour goes on beside the stamps.
    assert.match(text, /AWAN-UPTIME \d/);
    assert.doesNotMatch(text, /AWAN-SWAPON/, 'the stamp disk is not taken for swap');

    // The same disk as qcow2 (what a pool's volume is) reads the same.
    const qcow2 = join(root.path, 'stamps.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk, qcow2]);
    assert.equal(verifyStamps({ disk: qcow2, consoles: text }).summary, report.summary);
    assert.equal(verifyStamps({ disk: qcow2, consoles: text, maxBytes: 2 ** 20 }).summary, report.summary);
  });

  it('fails verification of one raw disk that two QEMUs wrote at once', async (t) => {
    const disk = join(root.path, 'shared.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', disk, '8M']);
    const qemu = (name: string, locking: 'on' | 'off') => {
      const log = openSync(join(root.path, `${name}.log`), 'a');
      try {
        const child = spawn('qemu-system-x86_64', [
          '-name', name, '-machine', 'pc', '-accel', 'tcg', '-m', '128', '-nodefaults', '-no-user-config', '-display', 'none',
          '-serial', `file:${join(root.path, `${name}.serial`)}`,
          '-kernel', guest.kernelPath, '-initrd', guest.initrdPath, '-append', `${guest.cmdline} ${stampSwitch('/dev/vda')}`,
          '-blockdev', `driver=file,node-name=f0,filename=${disk},locking=${locking}`,
          '-blockdev', 'driver=raw,node-name=d0,file=f0', '-device', 'virtio-blk-pci,drive=d0',
        ], { stdio: ['ignore', log, log] });
        children.push(child);
        return { child, serial: () => { try { return readFileSync(join(root.path, `${name}.serial`), 'utf8'); } catch { return ''; } } };
      } finally {
        closeSync(log);
      }
    };
    const exited = (c: ChildProcess) => (c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => c.once('exit', () => r())));

    const a = qemu('writer-a', 'on');
    await until(() => acknowledgedStamps(a.serial()).length >= 10, { timeoutMs: BOOT_MS, intervalMs: 100, what: 'writer A stamping' });
    // QEMU's image locking is what keeps a second writer out: it has to be turned off for this test.
    const refused = qemu('writer-refused', 'on');
    await exited(refused.child);
    assert.notEqual(refused.child.exitCode, 0);
    assert.match(readFileSync(join(root.path, 'writer-refused.log'), 'utf8'), /lock/);

    const b = qemu('writer-b', 'off');
    await until(() => acknowledgedStamps(b.serial()).length >= 20, { timeoutMs: BOOT_MS, intervalMs: 100, what: 'writer B stamping too' });
    for (const w of [a, b]) w.child.kill('SIGKILL');
    await Promise.all([exited(a.child), exited(b.child)]);

    const consoles = [a.serial(), b.serial()];
    const report = verifyStamps({ disk, consoles });
    t.diagnostic(report.summary);
    assert.equal(report.ok, false, `two writers passed verification:\n${report.summary}`);
    assert.equal(new Set(consoles.flatMap(acknowledgedStamps).map((s) => s.bootId)).size, 2, 'both guests stamped');
    assert.ok(report.violations.some((v) => /missing from the disk|two writers at once|not 1/.test(v)), report.summary);
  });
});
