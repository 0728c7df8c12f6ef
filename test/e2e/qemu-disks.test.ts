// VM disks with real QEMU: a qcow2 overlay on the image in the shared pool, grown while the VM is stopped,
// removed with the VM; the image itself is untouched.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { killMentioning } from '../support/processes.ts';
import { requireCommand } from '../support/system.ts';

const info = (path: string) => JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', path], { encoding: 'utf8' })) as { 'virtual-size': number; format: string; 'backing-filename'?: string };

describe('QEMU disks', { timeout: 300_000 }, () => {
  let c: Cluster<HypervisorDriver>;
  before(async () => {
    requireCommand('qemu-system-x86_64', 'apt-get install qemu-system-x86 qemu-utils');
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    c = await startCluster<HypervisorDriver>({
      hosts: 1,
      makeDriver: (name, dataDir) => createQemuDriver({ dataDir, hostname: name, address: '127.0.0.1', accel: 'tcg' }),
    });
  });
  after(async () => {
    if (!c) return;
    const dir = c.dir;
    await c.close();
    killMentioning(dir);
  });

  it('runs a VM on an overlay of its image, grows the overlay while stopped, and deletes it with the VM', async () => {
    const image = join(c.dir, 'template.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1G']);
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'template', format: 'qcow2', path: image })).status, 201);
    const r = await c.api('POST', '/api/v1/vms', { name: 'disky', cpus: 1, memoryMiB: 128, image: 'template' });
    assert.equal((await c.waitTask(r.body.task.id, 120_000)).state, 'succeeded');
    const disk = join(c.dir, 'pool', 'vms', r.body.vm.id, 'disk0.qcow2');
    assert.equal(info(disk)['backing-filename'], image);
    assert.equal(info(disk)['virtual-size'], 1024 ** 3);

    const refused = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 2 });
    assert.equal(refused.status, 409, 'a running VM keeps its disk size');
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/disky/stop', { force: true })).body.task.id, 60_000)).state, 'succeeded');
    const grown = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 2 });
    assert.equal(grown.status, 200, JSON.stringify(grown.body));
    assert.equal(grown.body.diskGiB, 2);
    assert.equal(info(disk)['virtual-size'], 2 * 1024 ** 3);
    const shrink = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 1 });
    assert.equal(shrink.status, 400);
    assert.match(shrink.body.error.message, /lose data/);

    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/disky')).body.task.id, 60_000)).state, 'succeeded');
    assert.equal(existsSync(disk), false);
    assert.equal(info(image)['virtual-size'], 1024 ** 3, 'the template is untouched');
  });
});
