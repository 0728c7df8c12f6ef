// What a VM may be called and asked for: no name that reads as an id, no more CPUs than a host has, no
// disk it does not have, and no disk growth the pool cannot hold; each refused up front with the reason.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

describe('VM names and sizes', () => {
  let c: Cluster;
  let images: string;
  before(async () => {
    c = await startCluster({ hosts: 1, control: { heartbeatIntervalMs: 1000 } });
    images = join(c.dir, 'pool', 'images');
    mkdirSync(images, { recursive: true });
  });
  after(async () => { await c?.close(); });

  it('refuses a name that has the form of an id, and finds a VM by its id even if another is named so', async () => {
    const a = await c.api('POST', '/api/v1/vms', { name: 'plain', cpus: 1, memoryMiB: 64, start: false });
    assert.equal(a.status, 202);
    const id = a.body.vm.id as string;
    const r = await c.api('POST', '/api/v1/vms', { name: id, cpus: 1, memoryMiB: 64, start: false });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    assert.match(r.body.error.message, /form of an id/);
    // A database from before the rule may hold such a name: the id still finds its own VM.
    const row = await c.control.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    await c.control.db.insertInto('vms').values({ ...row, id: '00000000-0000-4000-8000-000000000001', name: id }).execute();
    const got = await c.api('GET', `/api/v1/vms/${id}`);
    assert.equal(got.body.name, 'plain');
  });

  it('refuses a VM with more CPUs than any host, without holding its name', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'wide', cpus: 128, memoryMiB: 64 });
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'NO_CAPACITY');
    assert.match(r.body.error.message, /128 CPUs is larger than any host \(the largest can give 32 CPUs\)/);
    assert.equal((await c.api('GET', '/api/v1/vms/wide')).status, 404);
    const ok = await c.api('POST', '/api/v1/vms', { name: 'wide', cpus: 2, memoryMiB: 64 });
    assert.equal(ok.status, 202);
    assert.equal((await c.waitTask(ok.body.task.id)).state, 'succeeded');
  });

  it('shows no disk for a kernel-booted VM unless it asks for a blank one, and refuses to grow none', async () => {
    const kernelPath = join(images, 'vmlinuz');
    const initrdPath = join(images, 'initrd.img');
    writeFileSync(kernelPath, Buffer.alloc(4096));
    writeFileSync(initrdPath, Buffer.alloc(4096));
    const img = await c.api('POST', '/api/v1/images', { name: 'tiny-kernel', format: 'kernel', kernelPath, initrdPath });
    assert.equal(img.status, 201, JSON.stringify(img.body));
    const vm = await c.api('POST', '/api/v1/vms', { name: 'kernel-vm', cpus: 1, memoryMiB: 64, image: 'tiny-kernel', start: false });
    assert.equal(vm.status, 202, JSON.stringify(vm.body));
    assert.equal(vm.body.vm.diskGiB, 0);
    const sized = await c.api('POST', '/api/v1/vms', { name: 'kernel-vm-2', cpus: 1, memoryMiB: 64, image: 'tiny-kernel', diskGiB: 4, start: false });
    assert.equal(sized.status, 202, JSON.stringify(sized.body));
    assert.equal(sized.body.vm.diskGiB, 4, 'a blank data disk of the size asked for');
    const grow = await c.api('POST', '/api/v1/vms/kernel-vm/resize', { diskGiB: 2 });
    assert.equal(grow.status, 422);
    assert.match(grow.body.error.message, /has no disk to resize/);
  });

  it('grows a disk only as far as the pool has room', async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    const path = join(images, 'small.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'small', format: 'qcow2', path })).status, 201);
    const vm = await c.api('POST', '/api/v1/vms', { name: 'disky', cpus: 1, memoryMiB: 64, image: 'small', start: false });
    assert.equal(vm.body.vm.diskGiB, 1);
    const huge = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 65536 });
    assert.equal(huge.status, 422, JSON.stringify(huge.body));
    assert.equal(huge.body.error.code, 'NO_CAPACITY');
    assert.match(huge.body.error.message, /growing the disk by 65535 GiB does not fit: the pool has \d+ GiB free/);
    assert.equal((await c.api('GET', '/api/v1/vms/disky')).body.diskGiB, 1, 'nothing changed');
    const fits = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 2 });
    assert.equal(fits.status, 200, JSON.stringify(fits.body));
    assert.equal(fits.body.diskGiB, 2);
  });
});
