// Local disks an earlier release kept in the driver's data dir move into the host's pool on upgrade.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { moveLocalDisks } from './local-disks.ts';

describe('moving local disks into the pool', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-move-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('moves every disk, replacing a blank one made in its place, and removes the old directory', () => {
    const from = join(dir, 'qemu', 'local-pool');
    const to = join(dir, 'local-pool');
    mkdirSync(join(from, 'vms', 'a'), { recursive: true });
    mkdirSync(join(from, 'vms', 'b'), { recursive: true });
    mkdirSync(join(to, 'vms', 'a'), { recursive: true });
    writeFileSync(join(from, 'vms', 'a', 'disk0.qcow2'), 'the guest wrote this');
    writeFileSync(join(from, 'vms', 'b', 'disk0.qcow2'), 'b');
    writeFileSync(join(to, 'vms', 'a', 'disk0.qcow2'), 'blank');
    assert.deepEqual(moveLocalDisks(from, to).sort(), ['vms/a/disk0.qcow2', 'vms/b/disk0.qcow2']);
    assert.equal(readFileSync(join(to, 'vms', 'a', 'disk0.qcow2'), 'utf8'), 'the guest wrote this');
    assert.equal(readFileSync(join(to, 'vms', 'b', 'disk0.qcow2'), 'utf8'), 'b');
    assert.equal(existsSync(from), false);
    assert.deepEqual(moveLocalDisks(from, to), [], 'nothing to move the second time');
  });
});
