// The accelerator choice with a stand-in for qemu-system-x86_64: which answers are kept, which are not trusted.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { type AccelChoice, type AccelOptions, chooseAccel, currentAccel, forgetProbes, reprobeAccel } from './accel.ts';
import { tempDir } from './test-support.ts';

const root = tempDir('accel');
// These tests are about the probe and the cache: an AWAN_ACCEL from the caller's shell would bypass both.
const callersAccel = process.env.AWAN_ACCEL;
delete process.env.AWAN_ACCEL;
after(() => {
  root.remove();
  if (callersAccel !== undefined) process.env.AWAN_ACCEL = callersAccel;
});

type Behaviour = 'boots' | 'hangs' | 'fails';
let count = 0;

/**
 * A directory with a fake QEMU that boots, hangs or fails per accelerator (files `kvm` and `tcg` say which),
 * a log of the accelerators it was run with, a KVM device, a guest, data dirs and a machine-wide cache file.
 */
function world(kvm: Behaviour, tcg: Behaviour) {
  const dir = join(root.path, `w${count++}`);
  mkdirSync(dir);
  const qemu = join(dir, 'qemu-system-x86_64');
  writeFileSync(
    qemu,
    `#!/bin/sh
accel=
while [ $# -gt 0 ]; do [ "$1" = -accel ] && accel=$2; shift; done
echo "$accel" >>'${dir}/calls'
case "$(cat '${dir}/'"$accel")" in
  boots) echo 'Linux version 6.1'; echo 'AWAN-BOOTED'; exec sleep 60 ;;
  hangs) exec sleep 60 ;;
  *) echo "qemu-system-x86_64: stand-in failure under $accel" >&2; exit 1 ;;
esac
`,
  );
  chmodSync(qemu, 0o755);
  const set = (k: Behaviour, t: Behaviour) => {
    writeFileSync(join(dir, 'kvm'), k);
    writeFileSync(join(dir, 'tcg'), t);
  };
  set(kvm, tcg);
  const kvmDevice = join(dir, 'kvm-device');
  writeFileSync(kvmDevice, '');
  const guest = { kernelPath: join(dir, 'vmlinuz'), initrdPath: join(dir, 'initrd.img'), bootedMarker: 'AWAN-BOOTED' };
  const logged: { msg: string; fields?: Record<string, unknown>; level?: string }[] = [];
  const opts = (dataDir = 'host-a', extra: Partial<AccelOptions> = {}): AccelOptions => ({
    qemuBinary: qemu,
    dataDir: join(dir, dataDir),
    probeGuest: guest,
    probeTimeoutMs: 3000,
    probeCacheFile: join(dir, 'machine-cache.json'),
    kvmDevice,
    log: (msg, fields, level) => logged.push({ msg, fields, level }),
    ...extra,
  });
  const calls = () => (existsSync(join(dir, 'calls')) ? readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n') : []);
  const cached = (file: string): Record<string, unknown> | undefined =>
    existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : undefined;
  return {
    dir, qemu, opts, calls, set, logged,
    dataCache: (dataDir = 'host-a') => cached(join(dir, dataDir, 'accel.json')),
    machineCache: () => cached(join(dir, 'machine-cache.json')),
  };
}

const pick = (c: AccelChoice) => ({ accel: c.accel, how: c.how, evidence: c.verdict?.evidence });

describe('accelerator choice', () => {
  // Each test starts as a new process would: only the files on disk carry over.
  beforeEach(() => forgetProbes());

  it('says kvm only when a Linux kernel boots under KVM, and keeps that verdict with its evidence', async () => {
    const w = world('boots', 'boots');
    assert.deepEqual(pick(await chooseAccel(w.opts())), { accel: 'kvm', how: 'probed', evidence: 'linux-booted' });
    assert.deepEqual(w.calls(), ['kvm']);
    for (const file of [w.dataCache(), w.machineCache()]) {
      assert.equal(file?.accel, 'kvm');
      assert.equal(file?.evidence, 'linux-booted');
      assert.equal(file?.qemuBinary, w.qemu);
    }
    // The next process, on another data dir, trusts the kept verdict without booting anything.
    forgetProbes();
    assert.deepEqual(pick(await chooseAccel(w.opts('host-b'))), { accel: 'kvm', how: 'cached', evidence: 'linux-booted' });
    assert.deepEqual(w.calls(), ['kvm']);
    assert.equal(w.dataCache('host-b')?.evidence, 'linux-booted');
  });

  it('says tcg, and keeps it, when the kernel hangs or fails under KVM but boots under TCG', async () => {
    for (const kvm of ['hangs', 'fails'] as const) {
      forgetProbes();
      const w = world(kvm, 'boots');
      const choice = await chooseAccel(w.opts());
      assert.deepEqual(pick(choice), { accel: 'tcg', how: 'probed', evidence: 'linux-failed-under-kvm' }, kvm);
      assert.deepEqual(w.calls(), ['kvm', 'tcg']);
      assert.equal(w.dataCache()?.evidence, 'linux-failed-under-kvm');
      assert.equal(w.machineCache()?.evidence, 'linux-failed-under-kvm');
      assert.match(String(w.machineCache()?.detail), kvm === 'hangs' ? /did not boot within 3000 ms; under TCG it booted/ : /stand-in failure under kvm/);
    }
  });

  it('keeps nothing when the kernel boots under neither (a busy machine, a QEMU that fails): tcg for now', async () => {
    for (const [kvm, tcg] of [['hangs', 'hangs'], ['fails', 'fails']] as const) {
      forgetProbes();
      const w = world(kvm, tcg);
      const choice = await chooseAccel(w.opts());
      assert.deepEqual(pick(choice), { accel: 'tcg', how: 'probed', evidence: undefined });
      assert.match(choice.reason, /inconclusive.*not cached/);
      assert.equal(w.dataCache(), undefined);
      assert.equal(w.machineCache(), undefined);
      assert.ok(w.logged.some((l) => l.level === 'warn' && l.msg === 'accelerator probe inconclusive'));
      // Another driver of this process shares the answer, and still keeps nothing; the next process probes again.
      assert.equal((await chooseAccel(w.opts('host-b'))).accel, 'tcg');
      assert.deepEqual(w.calls(), ['kvm', 'tcg']);
      assert.equal(w.dataCache('host-b'), undefined);
      forgetProbes();
      await chooseAccel(w.opts('host-b'));
      assert.deepEqual(w.calls(), ['kvm', 'tcg', 'kvm', 'tcg']);
    }
  });

  it('without a probe guest runs under TCG for now, keeps nothing, says how to get one, and boots nothing', async () => {
    const w = world('boots', 'boots');
    const emptyGuestDir = join(w.dir, 'no-guest');
    mkdirSync(emptyGuestDir);
    // An earlier version's SeaBIOS-only verdict left in the data dir goes too.
    mkdirSync(join(w.dir, 'host-a'));
    writeFileSync(join(w.dir, 'host-a', 'accel.json'), JSON.stringify({ accel: 'kvm', qemuBinary: w.qemu, hostKernel: release(), probedAt: '2026-11-30T10:00:00.000Z' }));
    const saved = process.env.AWAN_GUEST_DIR;
    process.env.AWAN_GUEST_DIR = emptyGuestDir;
    try {
      const choice = await chooseAccel(w.opts('host-a', { probeGuest: undefined }));
      assert.deepEqual(pick(choice), { accel: 'tcg', how: 'probed', evidence: undefined });
      assert.match(choice.reason, /no probe guest in .*no-guest .*npm run build-guest.*AWAN_GUEST_DIR.*not cached/);
    } finally {
      if (saved === undefined) delete process.env.AWAN_GUEST_DIR;
      else process.env.AWAN_GUEST_DIR = saved;
    }
    assert.deepEqual(w.calls(), []);
    assert.equal(w.dataCache(), undefined);
    assert.equal(w.machineCache(), undefined);
  });

  it('says tcg without booting anything when the KVM device is missing', async () => {
    const w = world('boots', 'boots');
    const choice = await chooseAccel(w.opts('host-a', { kvmDevice: join(w.dir, 'no-such-kvm') }));
    assert.deepEqual(pick(choice), { accel: 'tcg', how: 'probed', evidence: 'no-kvm' });
    assert.deepEqual(w.calls(), []);
    assert.equal(w.dataCache()?.evidence, 'no-kvm');
  });

  it('does not trust a cached kvm that does not say how it was reached, or that the evidence cannot back', async () => {
    const old = { accel: 'kvm', qemuBinary: '', hostKernel: release(), probedAt: '2026-11-30T10:00:00.000Z' };
    const cases: [string, Record<string, unknown>][] = [
      ['written by an earlier version (no evidence)', old],
      ['evidence that backs tcg', { ...old, evidence: 'linux-failed-under-kvm', detail: 'x' }],
      ['another host kernel', { ...old, evidence: 'linux-booted', detail: 'x', hostKernel: '5.10.0-old' }],
    ];
    for (const [what, record] of cases) {
      forgetProbes();
      const w = world('hangs', 'boots');
      mkdirSync(join(w.dir, 'host-a'));
      for (const file of [join(w.dir, 'host-a', 'accel.json'), join(w.dir, 'machine-cache.json')]) {
        writeFileSync(file, JSON.stringify({ ...record, qemuBinary: w.qemu }));
      }
      assert.deepEqual(pick(await chooseAccel(w.opts())), { accel: 'tcg', how: 'probed', evidence: 'linux-failed-under-kvm' }, what);
      assert.deepEqual(w.calls(), ['kvm', 'tcg'], what);
      assert.equal(w.dataCache()?.accel, 'tcg', what);
      assert.equal(w.machineCache()?.accel, 'tcg', what);
    }
    // The same file with its evidence is trusted: the cases above fail on what they lack, not on their form.
    forgetProbes();
    const w = world('hangs', 'boots');
    writeFileSync(join(w.dir, 'machine-cache.json'), JSON.stringify({ ...old, evidence: 'linux-booted', detail: 'x', qemuBinary: w.qemu }));
    assert.deepEqual(pick(await chooseAccel(w.opts())), { accel: 'kvm', how: 'cached', evidence: 'linux-booted' });
    assert.deepEqual(w.calls(), []);
  });

  it('runs one probe for every driver that asks at once', async () => {
    const w = world('boots', 'boots');
    const choices = await Promise.all(['host-a', 'host-b', 'host-c'].map((d) => chooseAccel(w.opts(d))));
    assert.deepEqual(choices.map((c) => c.accel), ['kvm', 'kvm', 'kvm']);
    assert.deepEqual(w.calls(), ['kvm']);
    for (const d of ['host-a', 'host-b', 'host-c']) assert.equal(w.dataCache(d)?.evidence, 'linux-booted');
  });

  it('probes again when asked after a guest did not boot under KVM, and other drivers take up the new answer', async () => {
    const w = world('boots', 'boots');
    const first = await chooseAccel(w.opts('host-a'));
    const other = await chooseAccel(w.opts('host-b'));
    assert.equal(first.accel, 'kvm');
    assert.equal(other.accel, 'kvm');
    // The machine changed: Linux no longer boots under KVM.
    w.set('hangs', 'boots');
    const again = await reprobeAccel(w.opts('host-a'), first);
    assert.deepEqual(pick(again), { accel: 'tcg', how: 'probed', evidence: 'linux-failed-under-kvm' });
    assert.deepEqual(w.calls(), ['kvm', 'kvm', 'tcg']);
    assert.equal(w.dataCache('host-a')?.accel, 'tcg');
    assert.equal(w.machineCache()?.accel, 'tcg');
    assert.ok(w.logged.some((l) => l.level === 'warn' && /dropped the cached accelerator verdict/.test(l.msg)));
    // host-b still holds the old answer; it takes up the new one, and its own file follows.
    assert.equal(w.dataCache('host-b')?.accel, 'kvm');
    const taken = await currentAccel(w.opts('host-b'), other);
    assert.equal(taken.accel, 'tcg');
    assert.equal(w.dataCache('host-b')?.accel, 'tcg');
    // A second failure that started under the old answer does not probe once more.
    assert.equal((await reprobeAccel(w.opts('host-b'), other)).accel, 'tcg');
    assert.deepEqual(w.calls(), ['kvm', 'kvm', 'tcg']);
  });

  it('lets the options and AWAN_ACCEL decide without probing', async () => {
    const w = world('boots', 'boots');
    assert.deepEqual(pick(await chooseAccel(w.opts('host-a', { accel: 'tcg' }))), { accel: 'tcg', how: 'forced', evidence: undefined });
    process.env.AWAN_ACCEL = 'tcg';
    try {
      assert.deepEqual(pick(await chooseAccel(w.opts())), { accel: 'tcg', how: 'forced', evidence: undefined });
    } finally {
      delete process.env.AWAN_ACCEL;
    }
    assert.deepEqual(w.calls(), []);
    assert.equal(w.dataCache(), undefined);
  });
});
