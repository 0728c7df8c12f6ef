// Image files come only from the image directories, by real path, and only as regular files; a qcow2 may
// neither keep its data in an external file nor stand on a backing file outside those directories.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

const qcow2 = (path: string, ...args: string[]) => execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, path, '16M']);

describe('image paths', () => {
  let c: Cluster;
  let outside: string;
  before(async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    outside = mkdtempSync(join(tmpdir(), 'awan-outside-'));
    c = await startCluster();
  });
  after(async () => {
    await c?.close();
    if (outside) rmSync(outside, { recursive: true, force: true });
  });

  async function refused(body: Record<string, unknown>, message: RegExp): Promise<void> {
    const r = await c.api('POST', '/api/v1/images', body);
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'IMAGE_INVALID');
    assert.match(r.body.error.message, message);
    assert.equal((await c.api('GET', `/api/v1/images/${body.name}`)).status, 404, `${body.name} was not registered`);
  }

  it('refuses files outside the image directories, through symlinks and .. too', async () => {
    await refused({ name: 'sda', format: 'raw', path: '/dev/null' }, /\/dev\/null is outside the image directories/);
    await refused({ name: 'passwd', format: 'raw', path: '/etc/passwd' }, /outside the image directories/);
    const elsewhere = join(outside, 'disk.raw');
    writeFileSync(elsewhere, Buffer.alloc(1024 * 1024));
    await refused({ name: 'dotdot', format: 'raw', path: join(c.dir, '..', outside.split('/').pop()!, 'disk.raw') }, /outside the image directories/);
    symlinkSync(elsewhere, join(c.dir, 'link.raw'));
    await refused({ name: 'link', format: 'raw', path: join(c.dir, 'link.raw') }, /outside the image directories/);
    symlinkSync('/etc/shadow', join(c.dir, 'initrd.img'));
    writeFileSync(join(c.dir, 'vmlinuz'), 'kernel');
    await refused({ name: 'kern', format: 'kernel', kernelPath: join(c.dir, 'vmlinuz'), initrdPath: join(c.dir, 'initrd.img') }, /initrd .* is outside the image directories/);
    await refused({ name: 'kern2', format: 'kernel', kernelPath: '/boot/../etc/hostname', initrdPath: join(c.dir, 'vmlinuz') }, /kernel .* is outside the image directories/);
  });

  it('refuses devices, fifos and directories inside an image directory', async () => {
    execFileSync('mknod', [join(c.dir, 'null.raw'), 'c', '1', '3']);
    await refused({ name: 'dev', format: 'raw', path: join(c.dir, 'null.raw') }, /is not a regular file/);
    execFileSync('mkfifo', [join(c.dir, 'fifo.raw')]);
    await refused({ name: 'fifo', format: 'raw', path: join(c.dir, 'fifo.raw') }, /is not a regular file/);
    mkdirSync(join(c.dir, 'dir.qcow2'));
    await refused({ name: 'dir', format: 'qcow2', path: join(c.dir, 'dir.qcow2') }, /is not a regular file/);
  });

  it('records the real path it checked, not the symlink it was given', async () => {
    qcow2(join(c.dir, 'real.qcow2'));
    symlinkSync(join(c.dir, 'real.qcow2'), join(c.dir, 'alias.qcow2'));
    const r = await c.api('POST', '/api/v1/images', { name: 'alias', format: 'qcow2', path: join(c.dir, 'alias.qcow2') });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.path, join(c.dir, 'real.qcow2'));
  });

  it('refuses a qcow2 with an external data file', async () => {
    const path = join(c.dir, 'split.qcow2');
    qcow2(path, '-o', `data_file=${join(c.dir, 'split.data')}`);
    await refused({ name: 'split', format: 'qcow2', path }, /external data file/);
  });

  it('accepts a backing file inside the image directories and refuses one outside, or reached through a link out', async () => {
    const base = join(c.dir, 'base.qcow2');
    qcow2(base);
    const overlay = join(c.dir, 'overlay.qcow2');
    qcow2(overlay, '-F', 'qcow2', '-b', base);
    const ok = await c.api('POST', '/api/v1/images', { name: 'overlay', format: 'qcow2', path: overlay });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));

    const farBase = join(outside, 'base.qcow2');
    qcow2(farBase);
    const far = join(c.dir, 'far.qcow2');
    qcow2(far, '-F', 'qcow2', '-b', farBase);
    await refused({ name: 'far', format: 'qcow2', path: far }, /backing file .*base\.qcow2 is outside the image directories/);

    symlinkSync(farBase, join(c.dir, 'base-link.qcow2'));
    const linked = join(c.dir, 'linked.qcow2');
    qcow2(linked, '-F', 'qcow2', '-b', join(c.dir, 'base-link.qcow2'));
    await refused({ name: 'linked', format: 'qcow2', path: linked }, /backing file .* is outside the image directories/);

    // Two levels down: the middle layer is inside, its own backing file is not.
    const middle = join(c.dir, 'middle.qcow2');
    qcow2(middle, '-F', 'qcow2', '-b', farBase);
    const top = join(c.dir, 'top.qcow2');
    qcow2(top, '-F', 'qcow2', '-b', middle);
    await refused({ name: 'top', format: 'qcow2', path: top }, /middle\.qcow2: backing file .* is outside the image directories/);

    const imported = await c.api('POST', '/api/v1/images', { name: 'overlay-copy', format: 'qcow2', path: overlay, import: true });
    assert.equal(imported.status, 422);
    assert.equal(imported.body.error.code, 'UNSUPPORTED', 'control copies no files into pools');
  });
});
