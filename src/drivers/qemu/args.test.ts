// The memory part of QEMU's command line: main RAM padded under TCG only, and virtio-mem's room above it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { DriverVmSpec } from '../types.ts';
import { qemuArgs, ramKiB, TCG_RAM_PAD_KIB, type Accel } from './args.ts';
import { vmPaths } from './paths.ts';

function spec(memoryMiB: number, maxMemoryMiB: number): DriverVmSpec {
  return { id: 'm', name: 'm', cpus: 1, memoryMiB, maxMemoryMiB, boot: { kind: 'disk' }, disks: [], nics: [] };
}

function memoryArg(s: DriverVmSpec, accel: Accel): string {
  const args = qemuArgs({ spec: s, paths: vmPaths('/var/lib/awan', s.id), accel, nics: [] });
  return args[args.indexOf('-m') + 1];
}

describe('qemu memory arguments', () => {
  it('pads main RAM under TCG so QEMU before 9.0 syncs it page by page and keeps every write', () => {
    assert.equal(ramKiB(spec(256, 256), 'tcg'), 256 * 1024 + TCG_RAM_PAD_KIB);
    // QEMU's fast dirty-sync path takes RAM blocks that are whole multiples of 64 pages (256 KiB).
    assert.notEqual(ramKiB(spec(1024, 1024), 'tcg') % 256, 0);
    // QEMU rounds RAM up to 8 KiB: a smaller pad would be rounded into a multiple of 256 KiB again.
    assert.equal(ramKiB(spec(256, 256), 'tcg') % 8, 0);
    assert.equal(memoryArg(spec(256, 256), 'tcg'), `${256 * 1024 + TCG_RAM_PAD_KIB}k`);
  });

  it('leaves RAM as asked under KVM, whose dirty log has no such path', () => {
    assert.equal(memoryArg(spec(256, 256), 'kvm'), `${256 * 1024}k`);
  });

  it('keeps the whole virtio-mem region above padded RAM', () => {
    const ram = 512 * 1024 + TCG_RAM_PAD_KIB;
    assert.equal(memoryArg(spec(512, 1024), 'tcg'), `${ram}k,maxmem=${ram + 512 * 1024}k`);
    assert.equal(memoryArg(spec(512, 1024), 'kvm'), `${512 * 1024}k,maxmem=${1024 * 1024}k`);
  });
});
