// The pool contract, against the file pool (qemu-img, qemu-storage-daemon) and the simulator's memory pool.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createFilePool } from './file-pool.ts';
import { createMemoryPool } from './memory-pool.ts';
import type { StoragePool } from './pool.ts';
import { requireCommand } from '../../../test/support/system.ts';

const root = mkdtempSync(join(tmpdir(), 'awan-pool-'));
after(() => rmSync(root, { recursive: true, force: true }));

const code = (c: string) => (err: unknown) => (err as { code?: string }).code === c;

function contract(kind: string, make: (path: string) => StoragePool, before?: () => void) {
  describe(`${kind} pool`, () => {
    it('creates, keeps, grows and deletes a volume, idempotently', async () => {
      before?.();
      const pool = make(join(root, kind));
      const v = await pool.create({ name: 'vms/a/disk0.qcow2', format: 'qcow2', sizeMiB: 64 });
      assert.equal(v.sizeMiB, 64);
      assert.equal((await pool.create({ name: 'vms/a/disk0.qcow2', format: 'qcow2', sizeMiB: 32 })).sizeMiB, 64, 'an existing volume is kept');
      assert.equal((await pool.grow('vms/a/disk0.qcow2', 128)).sizeMiB, 128);
      assert.equal((await pool.grow('vms/a/disk0.qcow2', 128)).sizeMiB, 128, 'growing to its size again is fine');
      await assert.rejects(pool.grow('vms/a/disk0.qcow2', 16), code('VOLUME_INVALID'));
      await assert.rejects(pool.grow('vms/none.qcow2', 16), code('VOLUME_NOT_FOUND'));
      const s = await pool.stats();
      assert.ok(s.capacityMiB > 0 && s.freeMiB <= s.capacityMiB);
      await pool.delete('vms/a/disk0.qcow2');
      assert.equal(await pool.info('vms/a/disk0.qcow2'), undefined);
      await pool.delete('vms/a/disk0.qcow2'); // already gone
    });

    it('keeps volumes inside the pool', async () => {
      before?.();
      const pool = make(join(root, kind));
      for (const name of ['../escape.qcow2', '/abs.qcow2', 'a/../../b.qcow2', '.hidden', 'a//b']) {
        await assert.rejects(pool.create({ name, format: 'qcow2', sizeMiB: 1 }), code('VOLUME_INVALID'), name);
      }
    });

    it('exports a volume over NBD and stops again', async () => {
      before?.();
      const pool = make(join(root, kind));
      await pool.create({ name: 'exp.qcow2', format: 'qcow2', sizeMiB: 16 });
      const e = await pool.export('exp.qcow2', '127.0.0.1');
      assert.match(e.nbd, /^127\.0\.0\.1:\d+$/);
      assert.deepEqual(await pool.export('exp.qcow2', '127.0.0.1'), e, 'exporting again gives the same export');
      if (kind === 'file') {
        const [host, port] = e.nbd.split(':');
        const seen = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', `nbd://${host}:${port}/${e.exportName}`], { encoding: 'utf8' }));
        assert.equal(seen['virtual-size'], 16 * 1024 * 1024, 'another host reads the volume through the export');
      }
      await pool.unexport('exp.qcow2');
      await pool.delete('exp.qcow2');
      await pool.close();
    });
  });
}

contract('file', (path) => createFilePool({ type: 'local', path }), () => {
  requireCommand('qemu-img', 'apt-get install qemu-utils');
  requireCommand('qemu-storage-daemon', 'apt-get install qemu-system-x86');
});
contract('memory', (path) => createMemoryPool({ type: 'local', path }));

describe('file pool files', () => {
  it('makes an overlay on a backing image, and removes the VM directory with its last volume', async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    const base = join(root, 'base.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', base, '8M']);
    const pool = createFilePool({ type: 'shared', path: join(root, 'shared') });
    const v = await pool.create({ name: 'vms/x/disk0.qcow2', format: 'qcow2', sizeMiB: 32, backing: { path: base, format: 'raw' } });
    const seen = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', v.path], { encoding: 'utf8' }));
    assert.equal(seen['backing-filename'], base);
    assert.equal(seen['virtual-size'], 32 * 1024 * 1024);
    await pool.delete('vms/x/disk0.qcow2');
    assert.equal(existsSync(join(root, 'shared', 'vms', 'x')), false);
    assert.ok(existsSync(base), 'the backing image stays');
  });
});
