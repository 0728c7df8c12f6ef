// The capacity index never promises more than a host has, honours labels and anti-affinity, spreads or
// packs as asked, and explains a failure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CapacityIndex } from './capacity-index.ts';

const host = (id: string, memoryMiB: number, labels: Record<string, string> = {}, cpus = 16) => ({ id, name: id, schedulable: true, cpus, memoryMiB, labels });

describe('capacity index', () => {
  it('never places more memory on a host than it has (random workloads)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1024, max: 65536 }), { minLength: 1, maxLength: 20 }),
        fc.array(fc.record({ mem: fc.integer({ min: 64, max: 16384 }), release: fc.boolean() }), { maxLength: 200 }),
        fc.constantFrom('spread' as const, 'pack' as const),
        (sizes, requests, policy) => {
          const idx = new CapacityIndex();
          sizes.forEach((m, i) => idx.upsertHost(host(`h${i}`, m)));
          const placed: [string, string, number][] = [];
          requests.forEach((r, i) => {
            const p = idx.place({ memoryMiB: r.mem, cpus: 1 }, policy);
            if (p.ok) {
              idx.assign(`vm${i}`, p.hostId, { memoryMiB: r.mem, cpus: 1 });
              placed.push([`vm${i}`, p.hostId, r.mem]);
            } else {
              // A refusal is right only when no host had room.
              assert.ok(sizes.every((m, h) => m - placed.filter((x) => x[1] === `h${h}`).reduce((s, x) => s + x[2], 0) < r.mem));
            }
            if (r.release && placed.length) {
              const [vm] = placed.splice(0, 1)[0];
              idx.release(vm);
            }
          });
          sizes.forEach((m, h) => {
            const used = placed.filter((x) => x[1] === `h${h}`).reduce((s, x) => s + x[2], 0);
            assert.ok(used <= m);
            assert.equal(idx.usage(`h${h}`)!.usedMiB, used);
          });
        },
      ),
      { numRuns: 200 },
    );
  });

  it('spreads across hosts, and packs onto the fullest host that fits', () => {
    const spread = new CapacityIndex();
    for (const id of ['a', 'b', 'c']) spread.upsertHost(host(id, 8192));
    const counts = new Map<string, number>();
    for (let i = 0; i < 9; i++) {
      const p = spread.place({ memoryMiB: 512, cpus: 1 });
      assert.ok(p.ok);
      spread.assign(`v${i}`, p.hostId, { memoryMiB: 512, cpus: 1 });
      counts.set(p.hostId, (counts.get(p.hostId) ?? 0) + 1);
    }
    assert.deepEqual([...counts.values()], [3, 3, 3]);

    const pack = new CapacityIndex();
    for (const id of ['a', 'b', 'c']) pack.upsertHost(host(id, 8192));
    for (let i = 0; i < 9; i++) {
      const p = pack.place({ memoryMiB: 512, cpus: 1 }, 'pack');
      assert.ok(p.ok);
      pack.assign(`v${i}`, p.hostId, { memoryMiB: 512, cpus: 1 });
    }
    const used = ['a', 'b', 'c'].map((id) => pack.usage(id)!.usedMiB).sort((x, y) => y - x);
    assert.deepEqual(used, [4608, 0, 0]);
  });

  it('honours labels, anti-affinity, exclusions, CPU overcommit and unschedulable hosts', () => {
    const idx = new CapacityIndex({ cpuOvercommit: 1 });
    idx.upsertHost(host('gpu', 8192, { gpu: 'yes' }));
    idx.upsertHost(host('plain', 65536));
    idx.upsertHost({ ...host('down', 65536), schedulable: false, notSchedulableReason: 'unreachable' });
    const gpu = idx.place({ memoryMiB: 1024, cpus: 1, labels: { gpu: 'yes' } });
    assert.deepEqual(gpu, { ok: true, hostId: 'gpu' });
    idx.assign('db-1', 'plain', { memoryMiB: 1024, cpus: 1, antiAffinity: 'db' });
    assert.deepEqual(idx.place({ memoryMiB: 1024, cpus: 1, antiAffinity: 'db' }), { ok: true, hostId: 'gpu' });
    assert.deepEqual(idx.place({ memoryMiB: 1024, cpus: 1, exclude: ['plain'] }), { ok: true, hostId: 'gpu' });
    const tooManyCpus = idx.place({ memoryMiB: 1024, cpus: 17 });
    assert.equal(tooManyCpus.ok, false);
  });

  it('says why nothing fits, host by host', () => {
    const idx = new CapacityIndex();
    idx.upsertHost(host('a', 2048));
    idx.upsertHost(host('b', 2048, { zone: 'x' }));
    idx.upsertHost({ ...host('c', 65536), schedulable: false, notSchedulableReason: 'in maintenance' });
    const p = idx.place({ memoryMiB: 4096, cpus: 2 });
    assert.equal(p.ok, false);
    assert.equal(!p.ok && p.reason, 'no host has 4096 MiB and 2 CPUs free: 3 hosts considered (2 too little free memory, 1 in maintenance)');
    assert.equal(idx.largestHostMiB(), 65536);
  });

  it('lets memory overcommit promise more than a host has, by the ratio', () => {
    const idx = new CapacityIndex({ memoryOvercommit: 1.5 });
    idx.upsertHost(host('a', 4096));
    assert.ok(idx.place({ memoryMiB: 6144, cpus: 1 }).ok);
    assert.equal(idx.place({ memoryMiB: 6145, cpus: 1 }).ok, false);
  });
});
