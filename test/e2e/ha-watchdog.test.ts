// Self-fencing with real QEMU: when a host's agent is gone (here: stopped while its QEMUs run on, as after
// a crash), the host's watchdog process kills its HA guests once the lease runs out, and only after that
// does control restart them on the other host. Non-HA guests are left running.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureGuest } from '../../src/cli/guest.ts';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { killMentioning, pidsMentioning } from '../support/processes.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const QEMU_INSTALL = 'apt-get install qemu-system-x86 qemu-utils busybox-static cpio';

describe('the self-fencing watchdog of a QEMU host', { timeout: 600_000 }, () => {
  let c: Cluster<HypervisorDriver>;
  before(async () => {
    requireCommand('qemu-system-x86_64', QEMU_INSTALL);
    const guest = await ensureGuest();
    c = await startCluster<HypervisorDriver>({
      hosts: 1,
      makeDriver: (name, dataDir) => createQemuDriver({ dataDir: join(dataDir, 'qemu'), hostname: name, address: '127.0.0.1', accel: 'tcg', bootTimeoutMs: 90_000 }),
      control: { imageDirs: [dirname(guest.kernel), dirname(guest.initrd)], hostLeaseMs: 3000, failoverMarginMs: 1000, heartbeatIntervalMs: 500, haHostFailures: 0 },
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

  it('kills the HA guests of a host whose agent is gone, before control restarts them elsewhere', async () => {
    const ids: Record<string, string> = {};
    for (const name of ['ha-guest', 'plain-guest']) {
      const r = await c.api('POST', '/api/v1/vms', { name, cpus: 1, memoryMiB: 128, image: 'guest', ha: name === 'ha-guest' });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal((await c.waitTask(r.body.task.id, 180_000)).state, 'succeeded');
      ids[name] = r.body.vm.id;
    }
    const [first] = c.hosts;
    const [haPid] = qemuOf(ids['ha-guest']);
    const [plainPid] = qemuOf(ids['plain-guest']);
    assert.ok(haPid && plainPid, 'one QEMU per guest');
    const watchdog = Number(readFileSync(join(first.dataDir, 'fence', 'watchdog.pid'), 'utf8'));
    assert.ok(pidsMentioning('watchdog').includes(watchdog), 'the watchdog runs');
    await c.addHost('host-2');

    // The agent goes away and nothing of it runs; its QEMUs carry on, as they do after an agent crash.
    await c.stopAgent(first);
    await first.driver.close();
    assert.ok(qemuOf(ids['ha-guest']).includes(haPid), 'the HA guest still runs right after');

    // Watch both sides at once: the old QEMU must be gone before a new one exists anywhere.
    let killedAt = 0;
    let restartedAt = 0;
    await until(() => {
      const pids = qemuOf(ids['ha-guest']);
      if (!killedAt && !pids.includes(haPid)) killedAt = Date.now();
      if (!restartedAt && pids.some((p) => p !== haPid)) restartedAt = Date.now();
      return killedAt && restartedAt;
    }, { timeoutMs: 120_000, intervalMs: 20, what: 'the HA guest killed on host-1 and started on host-2' });
    assert.ok(killedAt <= restartedAt, `killed at ${killedAt}, restarted at ${restartedAt}`);
    const vm = await until(async () => {
      const v = (await c.api('GET', `/api/v1/vms/${ids['ha-guest']}`)).body;
      return v.phase === 'running' ? v : undefined;
    }, { timeoutMs: 180_000, what: 'the HA guest running on host-2' });
    assert.equal(vm.hostId, c.hosts[1].agent.hostId);
    assert.ok(qemuOf(ids['plain-guest']).includes(plainPid), 'the non-HA guest is left running');
    assert.match(readFileSync(join(first.dataDir, 'fence', 'fenced', ids['ha-guest']), 'utf8'), /lease ran out/);
    const plain = (await c.api('GET', `/api/v1/vms/${ids['plain-guest']}`)).body;
    assert.equal(plain.phase, 'failed');
  });
});
