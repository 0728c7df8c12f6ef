// The stamp verifier on fabricated disks: it passes one writer's boots and names each way two writers show.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { STAMP_RECORD_BYTES, type Stamp, acknowledgedStamps, stampRecord, verifyStamps } from './stamps.ts';

const A = 'a'.repeat(32);
const B = 'b'.repeat(32);
const C = 'c'.repeat(32);

/** A disk of `slots` records holding `stamps` from slot 0 on (undefined leaves a slot empty). */
function disk(stamps: (Stamp | undefined)[], slots = 64): Buffer {
  const buf = Buffer.alloc(slots * STAMP_RECORD_BYTES);
  stamps.forEach((s, i) => s && stampRecord(s).copy(buf, i * STAMP_RECORD_BYTES));
  return buf;
}
const boot = (bootId: string, from: number, to: number): Stamp[] => Array.from({ length: to - from + 1 }, (_, i) => ({ bootId, counter: from + i }));
const console_ = (stamps: Stamp[]) => stamps.map((s) => `AWAN-STAMP ${s.bootId} ${s.counter}\r\n`).join('AWAN-UPTIME 1.00\r\n');

describe('the stamp verifier', () => {
  it('passes two boots one after the other, with every acknowledged stamp on the disk', () => {
    // The last record of each boot was written but its acknowledgement never printed (killed in between).
    const r = verifyStamps({ disk: disk([...boot(A, 1, 10), ...boot(B, 1, 5)]), consoles: `noise/ # ${console_([...boot(A, 1, 9), ...boot(B, 1, 4)])}` });
    assert.equal(r.ok, true, r.summary);
    assert.deepEqual(r.boots, [A, B]);
    assert.deepEqual(r.runs.map((x) => [x.firstSlot, x.lastSlot, x.lastCounter, x.acknowledged, x.lastAcknowledged]), [[0, 9, 10, 9, 9], [10, 14, 5, 4, 4]]);
    assert.match(r.summary, /15 stamp\(s\) on the disk from 2 boot\(s\) in 2 run\(s\); 13 acknowledged/);
  });

  it('reads only whole acknowledgement lines', () => {
    assert.deepEqual(acknowledgedStamps(`AWAN-STAMP ${A} 1\nAWAN-STAMP ${A} 2\r\nAWAN-STAMP ${A} 3`), [{ bootId: A, counter: 1 }, { bootId: A, counter: 2 }]);
  });

  it('fails when an older boot writes again after a newer one', () => {
    const r = verifyStamps({ disk: disk([...boot(A, 1, 3), ...boot(B, 1, 2), ...boot(A, 4, 5)]), consoles: '' });
    assert.equal(r.ok, false);
    assert.match(r.summary, /boot aaaaaaaa writes again at slot 5 \(counter 4\) after boot bbbbbbbb wrote: two writers at once/);
    assert.equal(r.runs.length, 3);
  });

  it('fails when counters within a boot skip or repeat', () => {
    const r = verifyStamps({ disk: disk([...boot(A, 1, 3), { bootId: A, counter: 5 }, { bootId: A, counter: 5 }]), consoles: '' });
    assert.equal(r.ok, false);
    assert.deepEqual(r.violations, ['boot aaaaaaaa: counter 5 at slot 3 follows 3 (expected 4)', 'boot aaaaaaaa: counter 5 at slot 4 follows 5 (expected 6)']);
  });

  it('fails when an acknowledged stamp is missing, and when a boot begins past its first stamp', () => {
    // B overwrote A's first records: what A was told was written is gone.
    const r = verifyStamps({ disk: disk([...boot(B, 1, 4), ...boot(A, 5, 8)]), consoles: [console_(boot(A, 1, 8)), console_([...boot(B, 1, 4), ...boot(C, 1, 2)])] });
    assert.equal(r.ok, false);
    assert.ok(r.violations.includes('boot aaaaaaaa begins at slot 4 with counter 5, not 1: its first records were overwritten'), r.summary);
    assert.ok(r.violations.includes('boot aaaaaaaa: 4 acknowledged stamp(s) missing from the disk: 1-4'), r.summary);
    assert.ok(r.violations.includes('boot cccccccc: 2 acknowledged stamp(s) missing from the disk (the boot has no record on the disk at all): 1-2'), r.summary);
    assert.match(r.summary, /boot c{32}: acknowledged 2, nothing on the disk/);
  });

  it('fails on a hole in the log and on a record that is not a stamp', () => {
    const buf = disk([...boot(A, 1, 2), undefined, ...boot(A, 3, 3)]);
    buf.write('AWSTAMP1 garbage', 10 * STAMP_RECORD_BYTES, 'latin1');
    const r = verifyStamps({ disk: buf, consoles: '' });
    assert.equal(r.ok, false);
    assert.deepEqual(r.violations, ['records that are not stamps at slots 10', 'records after the empty slot 2 (the log has holes): slots 3, 10']);
  });

  it('passes an empty disk with nothing acknowledged, and says so', () => {
    const r = verifyStamps({ disk: disk([]), consoles: 'AWAN-BOOTED\n' });
    assert.equal(r.ok, true);
    assert.equal(r.summary, '0 stamp(s) on the disk from 0 boot(s) in 0 run(s); 0 acknowledged on the console(s)\nno violation');
  });
});
