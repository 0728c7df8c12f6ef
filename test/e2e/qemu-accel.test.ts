// A host whose cached KVM verdict has gone stale: the first guest does not boot, the host probes again, the task
// says so, and the next start runs under TCG. Real QEMU; "KVM" is a wrapper under which Linux never comes up.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import { requireGuest, tempDir } from '../../src/drivers/qemu/test-support.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { killMentioning } from '../support/processes.ts';
import { until } from '../until.ts';

/** The hung start waits all of it; the TCG start after it must fit in it, on a machine as busy as CI's can be. */
const BOOT_TIMEOUT_MS = 40_000;

/**
 * Stands in for qemu-system-x86_64 on a machine where a Linux guest hangs under KVM, on any machine: under
 * `-accel kvm` the accelerator probe fails at once, and a VM runs under TCG with a shell for init, so its
 * kernel boots but never prints the guest's ready text. Everything else is real QEMU.
 */
const WRAPPER = `#!/bin/bash
if [[ " $* " != *" -accel kvm "* ]]; then exec qemu-system-x86_64 "$@"; fi
if [[ " $* " == *" -serial stdio "* ]]; then echo "stand-in: Linux hangs under KVM here" >&2; exit 1; fi
args=(); prev=
for a in "$@"; do
  [[ $prev == -accel ]] && a=tcg
  [[ $prev == -append ]] && a="$a rdinit=/bin/sh"
  args+=("$a"); prev=$a
done
exec qemu-system-x86_64 "\${args[@]}"
`;

describe('a stale KVM verdict', { timeout: 300_000 }, () => {
  const root = tempDir('accel-e2e');
  const wrapper = join(root.path, 'qemu-system-x86_64');
  const kvmDevice = join(root.path, 'kvm');
  const logged: { msg: string; fields?: Record<string, unknown>; level?: string }[] = [];
  let c: Cluster<HypervisorDriver>;
  let hostDir = '';

  before(async () => {
    const guest = requireGuest();
    writeFileSync(wrapper, WRAPPER);
    chmodSync(wrapper, 0o755);
    writeFileSync(kvmDevice, '');
    c = await startCluster<HypervisorDriver>({
      // Beats far apart enough that a busy machine does not make the host flap while QEMU boots.
      control: { heartbeatIntervalMs: 2000, imageDirs: [dirname(guest.kernelPath), dirname(guest.initrdPath)] },
      makeDriver: async (name, dataDir) => {
        hostDir = dataDir;
        mkdirSync(dataDir, { recursive: true });
        // What an earlier, conclusive probe would have left: Linux booted under KVM then.
        const verdict = { accel: 'kvm', evidence: 'linux-booted', detail: 'the probe kernel booted under KVM', qemuBinary: wrapper, hostKernel: release(), probedAt: new Date().toISOString() };
        writeFileSync(join(dataDir, 'accel.json'), JSON.stringify(verdict));
        return createQemuDriver({
          dataDir, hostname: name, address: '127.0.0.1', qemuBinary: wrapper, kvmDevice,
          probeCacheFile: join(root.path, 'machine-accel.json'),
          probeGuest: { kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, bootedMarker: 'AWAN-BOOTED' },
          bootTimeoutMs: BOOT_TIMEOUT_MS,
          // The stand-in fails at once under KVM; TCG then has all this to boot, however busy the machine.
          probeTimeoutMs: 60_000,
          log: (msg, fields, level) => logged.push({ msg, fields, level }),
        });
      },
    });
    await c.addHost('host-1');
    const image = await c.api('POST', '/api/v1/images', { name: 'test-guest', format: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: guest.cmdline, readyText: 'AWAN-BOOTED' });
    assert.equal(image.status, 201, JSON.stringify(image.body));
  });
  after(async () => {
    const dir = c?.dir;
    await c?.close();
    // VMs outlive their driver by design; the test's own go with it.
    if (dir) killMentioning(dir);
    root.remove();
  });

  it('fails the first start saying the accelerator was probed again, and the next start runs under TCG', async () => {
    const hosts = await c.api<{ items: { accelerator: string }[] }>('GET', '/api/v1/hosts');
    assert.equal(hosts.body.items[0].accelerator, 'kvm', 'the host starts out trusting its cached verdict');

    const created = await c.api('POST', '/api/v1/vms', { name: 'k1', cpus: 1, memoryMiB: 256, image: 'test-guest' });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const task = await c.waitTask(created.body.task.id, BOOT_TIMEOUT_MS + 90_000);
    assert.equal(task.state, 'failed');
    const said = new RegExp(
      `did not boot within ${BOOT_TIMEOUT_MS} ms under KVM; the accelerator was probed again \\(under KVM the probe kernel QEMU ended before the guest booted \\(.*Linux hangs under KVM here\\); under TCG it booted\\): VMs on this host run under TCG from now on; start .* again`,
    );
    assert.match(task.error.message, said);
    const vm = await c.api<{ phase: string; message: string }>('GET', `/api/v1/vms/${created.body.vm.id}`);
    assert.equal(vm.body.phase, 'failed');
    assert.match(vm.body.message, said);

    // The log says it too, with fields a machine can read.
    const line = logged.find((l) => l.msg === 'a guest did not boot under KVM: probed the accelerator again');
    assert.equal(line?.level, 'warn');
    assert.deepEqual({ ...line?.fields, reason: undefined }, { vmId: created.body.vm.id, before: 'kvm', after: 'tcg', evidence: 'linux-failed-under-kvm', reason: undefined });
    // Control shows the host's new accelerator.
    await until(async () => (await c.api<{ items: { accelerator: string }[] }>('GET', '/api/v1/hosts')).body.items[0].accelerator === 'tcg', { what: 'host shown under TCG' });
    // The stale verdict is gone; what the probe found instead is kept, with how it was found.
    for (const file of [join(hostDir, 'accel.json'), join(root.path, 'machine-accel.json')]) {
      const kept = JSON.parse(readFileSync(file, 'utf8')) as { accel: string; evidence: string };
      assert.deepEqual([kept.accel, kept.evidence], ['tcg', 'linux-failed-under-kvm'], file);
    }

    const started = await c.api('POST', `/api/v1/vms/${created.body.vm.id}/start`);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const second = await c.waitTask(started.body.task.id, BOOT_TIMEOUT_MS + 30_000);
    assert.equal(second.state, 'succeeded', JSON.stringify(second.error));
    const running = await c.api<{ phase: string }>('GET', `/api/v1/vms/${created.body.vm.id}`);
    assert.equal(running.body.phase, 'running');
    const record = JSON.parse(readFileSync(join(hostDir, 'vms', created.body.vm.id, 'spec.json'), 'utf8')) as { accel: string };
    assert.equal(record.accel, 'tcg');
  });
});
