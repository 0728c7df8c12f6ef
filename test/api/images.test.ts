// Images enter the catalogue only after qemu-img has read them: a corrupt, mislabelled or missing file is
// refused with IMAGE_INVALID.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

describe('images', () => {
  let c: Cluster;
  before(async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    c = await startCluster({ hosts: 1 });
  });
  after(async () => { await c?.close(); });

  it('registers a qcow2 image with the size qemu-img reports', async () => {
    const path = join(c.dir, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '3G']);
    const r = await c.api('POST', '/api/v1/images', { name: 'base', format: 'qcow2', path });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.sizeMiB, 3072);
    assert.equal(r.body.path, path);
  });

  it('refuses a file that is not what it claims, a corrupt one and a missing one', async () => {
    const raw = join(c.dir, 'disk.raw');
    writeFileSync(raw, Buffer.alloc(1024 * 1024));
    const mislabelled = await c.api('POST', '/api/v1/images', { name: 'x1', format: 'qcow2', path: raw });
    assert.equal(mislabelled.status, 422);
    assert.equal(mislabelled.body.error.code, 'IMAGE_INVALID');
    assert.match(mislabelled.body.error.message, /is not a qcow2 image/);
    const qcow2 = join(c.dir, 'really.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, '16M']);
    const asRaw = await c.api('POST', '/api/v1/images', { name: 'x4', format: 'raw', path: qcow2 });
    assert.equal(asRaw.status, 422);
    assert.equal(asRaw.body.error.code, 'IMAGE_INVALID');
    assert.match(asRaw.body.error.message, /is a qcow2 image, not raw/);

    const corrupt = join(c.dir, 'corrupt.qcow2');
    const header = Buffer.alloc(512);
    header.write('QFI\xfb', 0, 'latin1');
    header.writeUInt32BE(3, 4); // version 3, then nonsense
    header.writeUInt32BE(0xffffffff, 20);
    writeFileSync(corrupt, header);
    const bad = await c.api('POST', '/api/v1/images', { name: 'x2', format: 'qcow2', path: corrupt });
    assert.equal(bad.status, 422);
    assert.equal(bad.body.error.code, 'IMAGE_INVALID');

    const missing = await c.api('POST', '/api/v1/images', { name: 'x3', format: 'qcow2', path: join(c.dir, 'nope.qcow2') });
    assert.equal(missing.status, 422);
    assert.equal(missing.body.error.code, 'IMAGE_INVALID');
    const names = (await c.api('GET', '/api/v1/images')).body.items.map((i: any) => i.name);
    assert.ok(!names.some((n: string) => n.startsWith('x')), 'nothing refused was registered');
  });

  it('keeps an image a VM uses (409 IMAGE_IN_USE) and deletes it once unused', async () => {
    const vm = await c.api('POST', '/api/v1/vms', { name: 'uses-base', cpus: 1, memoryMiB: 256, image: 'base', start: false });
    assert.equal(vm.status, 202, JSON.stringify(vm.body));
    const refused = await c.api('DELETE', '/api/v1/images/base');
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'IMAGE_IN_USE');
    await c.waitTask((await c.api('DELETE', '/api/v1/vms/uses-base')).body.task.id);
    assert.equal((await c.api('DELETE', '/api/v1/images/base')).status, 204);
    assert.equal((await c.api('GET', '/api/v1/images/base')).status, 404);
  });

  it('refuses a VM on an unknown image with 404', async () => {
    const r = await c.api('POST', '/api/v1/vms', { name: 'no-image', cpus: 1, memoryMiB: 256, image: 'does-not-exist' });
    assert.equal(r.status, 404);
    assert.equal(r.body.error.code, 'IMAGE_NOT_FOUND');
  });

  it('lets only admins register an image, since its path names a file on the servers', async () => {
    assert.equal((await c.api('POST', '/api/v1/users', { username: 'op1', password: 'operator-password', role: 'operator' })).status, 201);
    const op = (await c.api('POST', '/api/v1/auth/login', { username: 'op1', password: 'operator-password' }, '')).body.token;
    const r = await c.api('POST', '/api/v1/images', { name: 'shadow', format: 'raw', path: '/etc/shadow' }, op);
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'FORBIDDEN');
  });
});
