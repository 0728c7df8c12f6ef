// Faults with real QEMU end in a failed task or a failed VM with the reason, and leave no QEMU behind: a
// corrupt image, a guest that never boots, QEMU dying under a running VM, a migration target that vanishes.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureGuest } from '../../src/cli/guest.ts';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import { lastGuestUptime } from '../../src/drivers/qemu/test-support.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { killMentioning, pidsMentioning } from '../support/processes.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const QEMU_INSTALL = 'apt-get install qemu-system-x86 qemu-utils busybox-static cpio';

describe('QEMU faults', { timeout: 600_000 }, () => {
  let c: Cluster<HypervisorDriver>;
  before(async () => {
    requireCommand('qemu-system-x86_64', QEMU_INSTALL);
    requireCommand('qemu-img', QEMU_INSTALL);
    const guest = await ensureGuest();
    c = await startCluster<HypervisorDriver>({
      hosts: 2,
      // A slow migration link, so the test can take the target away while memory is still being sent.
      makeDriver: (name, dataDir) =>
        createQemuDriver({ dataDir, hostname: name, address: '127.0.0.1', accel: 'tcg', bootTimeoutMs: 60_000, migrationBandwidthBytes: 2 * 1024 * 1024 }),
      control: { imageDirs: [dirname(guest.kernel), dirname(guest.initrd)] },
    });
    const image = await c.api('POST', '/api/v1/images', { name: 'guest', format: 'kernel', kernelPath: guest.kernel, initrdPath: guest.initrd, cmdline: guest.cmdline, readyText: 'AWAN-BOOTED' });
    assert.equal(image.status, 201, JSON.stringify(image.body));
  });
  after(async () => {
    if (!c) return;
    const dir = c.dir;
    await c.close();
    killMentioning(dir);
  });

  const qemuOf = (vmId: string) => pidsMentioning(vmId, 'qemu-system');

  it('fails the start of a VM whose disk image was corrupted, and runs no QEMU for it', async () => {
    const path = join(c.dir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '64M']);
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'disk', format: 'qcow2', path })).status, 201);
    writeFileSync(path, Buffer.alloc(4096, 0xab)); // the file rots after it was registered
    const r = await c.api('POST', '/api/v1/vms', { name: 'rotten', cpus: 1, memoryMiB: 128, image: 'disk' });
    const task = await c.waitTask(r.body.task.id, 60_000);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'IMAGE_INVALID', JSON.stringify(task));
    assert.equal((await c.api('GET', '/api/v1/vms/rotten')).body.phase, 'failed');
    assert.deepEqual(qemuOf(r.body.vm.id), []);
  });

  it('fails the start of a guest that never boots, and kills its QEMU', async () => {
    const junk = join(c.dir, 'junk-initrd.img');
    writeFileSync(junk, Buffer.alloc(64 * 1024, 0x5a));
    const guest = await ensureGuest();
    await c.api('POST', '/api/v1/images', { name: 'no-boot', format: 'kernel', kernelPath: guest.kernel, initrdPath: junk, cmdline: `${guest.cmdline} panic=0`, readyText: 'AWAN-BOOTED' });
    const r = await c.api('POST', '/api/v1/vms', { name: 'never-boots', cpus: 1, memoryMiB: 128, image: 'no-boot' });
    const task = await c.waitTask(r.body.task.id, 120_000);
    assert.equal(task.state, 'failed');
    assert.match(task.error.code, /BOOT_FAILED/, JSON.stringify(task));
    await until(() => qemuOf(r.body.vm.id).length === 0, { what: 'no QEMU left for the VM' });
  });

  it('marks a running VM failed with the reason when its QEMU dies', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'crashy', cpus: 1, memoryMiB: 192, image: 'guest' });
    const created = await c.waitTask(r.body.task.id, 120_000);
    assert.equal(created.state, 'succeeded', JSON.stringify(created));
    const [pid] = qemuOf(r.body.vm.id);
    assert.ok(pid, 'the VM has a QEMU process');
    process.kill(pid, 'SIGKILL');
    const vm = await until(async () => {
      const v = (await c.api('GET', '/api/v1/vms/crashy')).body;
      return v.phase === 'failed' ? v : undefined;
    }, { timeoutMs: 30_000, what: 'VM failed' });
    assert.ok(vm.message && vm.message.length > 0, 'the VM says why it failed');
    const events = (await c.api('GET', `/api/v1/events?object=${vm.id}`)).body.items;
    assert.ok(events.some((e: any) => e.type === 'vm.failed'));
  });

  it('keeps a VM running on its source when the migration target vanishes', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'mover', cpus: 1, memoryMiB: 192, image: 'guest' });
    const created = await c.waitTask(r.body.task.id, 120_000);
    assert.equal(created.state, 'succeeded', JSON.stringify(created));
    const before = (await c.api('GET', '/api/v1/vms/mover')).body;
    const sourcePid = qemuOf(before.id)[0];
    const m = await c.api('POST', '/api/v1/vms/mover/migrate');
    assert.equal(m.status, 202);
    // The destination dies while memory is on its way (the task says it is copying).
    await until(async () => /copying memory/.test((await c.api('GET', `/api/v1/tasks/${m.body.task.id}`)).body.message ?? ''), { timeoutMs: 60_000, intervalMs: 10, what: 'copying' });
    const [incoming] = qemuOf(before.id).filter((pid) => pid !== sourcePid);
    assert.ok(incoming, 'the destination runs an incoming QEMU');
    process.kill(incoming, 'SIGKILL');
    const task = await c.waitTask(m.body.task.id, 120_000);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'MIGRATION_FAILED', JSON.stringify(task));
    const after = (await c.api('GET', '/api/v1/vms/mover')).body;
    assert.equal(after.hostId, before.hostId);
    assert.equal(after.phase, 'running');
    assert.deepEqual(qemuOf(before.id), [sourcePid], 'only the source QEMU is left');
    // Under TCG the guest was paused for the copy: it must run again, not only be said to.
    // The source is the host control names (the destination may list its dead copy until it is cleaned up).
    const sourceName = (await c.api('GET', `/api/v1/hosts/${after.hostId}`)).body.name;
    const source = c.hosts.find((h) => h.name === sourceName)?.driver;
    assert.ok(source, `the test knows host ${sourceName}`);
    const uptime = async () => lastGuestUptime(await source.consoleHistory(before.id)) ?? NaN;
    const failedAt = await uptime();
    await until(async () => (await uptime()) > failedAt + 1, { timeoutMs: 30_000, what: 'the guest counting on at its source' });
    // The VMs of the earlier tests go too (they are absent when this test runs alone).
    for (const name of ['mover', 'crashy', 'never-boots', 'rotten']) {
      const res = await c.api('DELETE', `/api/v1/vms/${name}`);
      if (name !== 'mover' && res.status === 404) continue;
      assert.equal(res.status, 202, JSON.stringify(res.body));
      await c.waitTask(res.body.task.id, 60_000);
    }
    assert.deepEqual(qemuOf(before.id), []);
  });
});
