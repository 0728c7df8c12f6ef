// Disk images through qemu-img, and VMs on them: overlays, refusal of bad images, a disk that migrates.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createQemuDriver, deleteVolume, ensureDisk, inspectImage, resizeVolume } from './index.ts';
import { guestSpec, trackDrivers, requireGuest, requireQemu, tempDir } from './test-support.ts';
import { until } from '../../../test/until.ts';

const root = tempDir('qi');
const MiB = 1024 * 1024;
const drivers = trackDrivers(root);


function isImageInvalid(err: unknown): boolean {
  return err instanceof Error && err.name === 'DriverError' && (err as { code?: string }).code === 'IMAGE_INVALID';
}

describe('qemu images', () => {
  it('creates overlays on a backing image, inspects, resizes and deletes volumes', async () => {
    requireQemu();
    const base = join(root.path, 'base.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', base, '32M']);
    const overlay = join(root.path, 'vols', 'overlay.qcow2');
    await ensureDisk({ path: overlay, format: 'qcow2', backingPath: base, backingFormat: 'raw' });
    const info = await inspectImage(overlay);
    assert.equal(info.format, 'qcow2');
    assert.equal(info.virtualSizeBytes, 32 * MiB);
    assert.equal(info.backingPath, base);
    // An existing disk is kept (never made afresh) and grown to the size asked, never shrunk.
    await ensureDisk({ path: overlay, format: 'qcow2', backingPath: base, sizeMiB: 48 });
    assert.equal((await inspectImage(overlay)).virtualSizeBytes, 48 * MiB);
    assert.equal((await inspectImage(overlay)).backingPath, base);
    await ensureDisk({ path: overlay, format: 'qcow2', backingPath: base, sizeMiB: 16 });
    assert.equal((await inspectImage(overlay)).virtualSizeBytes, 48 * MiB);
    // Two at once (a pool and a VM start): one file, no work files left.
    const twice = join(root.path, 'vols', 'twice.qcow2');
    await Promise.all([ensureDisk({ path: twice, format: 'qcow2', sizeMiB: 8 }), ensureDisk({ path: twice, format: 'qcow2', sizeMiB: 8 })]);
    assert.equal((await inspectImage(twice)).virtualSizeBytes, 8 * MiB);
    assert.deepEqual(readdirSync(join(root.path, 'vols')).filter((n) => n.startsWith('.')), []);

    assert.equal((await resizeVolume(overlay, 64)).virtualSizeBytes, 64 * MiB);
    await assert.rejects(resizeVolume(overlay, 16), isImageInvalid);
    assert.equal((await resizeVolume(overlay, 16, { shrink: true })).virtualSizeBytes, 16 * MiB);
    await deleteVolume(overlay);
    assert.equal(existsSync(overlay), false);
    await deleteVolume(overlay); // already gone is fine
  });

  it('refuses missing, corrupt and mislabelled images with IMAGE_INVALID', async () => {
    requireQemu();
    await assert.rejects(inspectImage(join(root.path, 'nope.qcow2')), isImageInvalid);
    const corrupt = join(root.path, 'corrupt.qcow2');
    // A qcow2 magic followed by garbage: qemu-img cannot make sense of the header.
    writeFileSync(corrupt, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(4, 0xff), Buffer.alloc(4096, 0x5a)]));
    await assert.rejects(inspectImage(corrupt), isImageInvalid);
    const raw = join(root.path, 'plain.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', raw, '8M']);
    await assert.rejects(ensureDisk({ path: raw, format: 'qcow2' }), isImageInvalid);
    await assert.rejects(ensureDisk({ path: join(root.path, 'x.qcow2'), format: 'qcow2', backingPath: corrupt }), isImageInvalid);
    await assert.rejects(ensureDisk({ path: join(root.path, 'y.qcow2'), format: 'qcow2' }), isImageInvalid);
  });

  it('a VM with a corrupt disk does not start', { timeout: 120_000 }, async () => {
    requireGuest();
    const driver = await createQemuDriver({ dataDir: join(root.path, 'bad'), address: '127.0.0.1' });
    drivers.add(driver);
    const corrupt = join(root.path, 'corrupt2.qcow2');
    writeFileSync(corrupt, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(4096, 0x5a)]));
    await assert.rejects(driver.start(guestSpec('baddisk', { disks: [{ path: corrupt, format: 'qcow2' }] })), isImageInvalid);
    assert.notEqual((await driver.status('baddisk')).state, 'running');
  });

  it('a VM on a shared overlay disk migrates with its data', { timeout: 180_000 }, async (t) => {
    requireGuest();
    const opts = { address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/ };
    const a = await createQemuDriver({ ...opts, dataDir: join(root.path, 'ha'), hostname: 'ha' });
    drivers.add(a);
    const b = await createQemuDriver({ ...opts, dataDir: join(root.path, 'hb'), hostname: 'hb' });
    drivers.add(b);
    const base = join(root.path, 'template.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const disk = join(root.path, 'pool', 'mig-disk.qcow2');
    const spec = guestSpec('mig', { disks: [{ path: disk, format: 'qcow2', backingPath: base, backingFormat: 'qcow2' }] });

    const bootStart = Date.now();
    await a.start(spec);
    t.diagnostic(`boot to AWAN-BOOTED: ${Date.now() - bootStart} ms`);
    // Write a marker to the disk from inside the guest, then read it back on the other host.
    await a.consoleWrite('mig', 'echo awan-disk-marker > /dev/vda; sync; echo wrote-$((1+1))\n');
    await until(async () => (await a.consoleHistory('mig')).includes('wrote-2'), { timeoutMs: 30_000, what: 'the write' });

    const target = await b.prepareIncoming(spec);
    const result = await a.migrate('mig', target);
    t.diagnostic(`migration of a 256 MiB guest: total ${result.totalMs} ms, downtime ${result.downtimeMs} ms`);
    assert.ok(result.totalMs > 0, 'QEMU reported how long the migration took');
    assert.equal((await b.completeIncoming('mig')).state, 'running');
    assert.deepEqual(await a.list(), []);
    await b.consoleWrite('mig', 'head -c 16 /dev/vda; echo; echo read-$((2+1))\n');
    await until(async () => (await b.consoleHistory('mig')).includes('read-3'), { timeoutMs: 30_000, what: 'the read' });
    assert.match(await b.consoleHistory('mig'), /awan-disk-marke/);
    await b.delete('mig');
    assert.equal(existsSync(disk), true, 'the pool disk outlives the VM');
  });
});
