// The console history a QEMU driver keeps is exactly what the guest printed, also when its reader falls behind.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createQemuDriver } from './index.ts';
import { guestSpec, requireGuest, tempDir, trackDrivers } from './test-support.ts';
import { until } from '../../../test/until.ts';

const root = tempDir('ch');
const drivers = trackDrivers(root);

/**
 * Holds this process's event loop, as a host busy with other work does: the driver reads nothing from the
 * console socket meanwhile, and QEMU finds it full. Atomics.wait blocks without spinning a CPU.
 */
function holdEventLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

describe('qemu console history', () => {
  it('is byte-exact while the driver is too busy to read the console', { timeout: 180_000 }, async () => {
    requireGuest();
    const driver = await createQemuDriver({ dataDir: join(root.path, 'a'), address: '127.0.0.1', guestReadyPattern: /AWAN-BOOTED/ });
    drivers.add(driver);
    await driver.start(guestSpec('chatty', { nics: [] }));
    // 3001 numbers, one a line: about 21 KB, all of it inside the history the driver hands out (64 KiB).
    await driver.consoleWrite('chatty', 'seq 100000 103000; echo "END-$((6*7))"\n');
    const deadline = Date.now() + 120_000;
    while (!(await driver.consoleHistory('chatty')).includes('END-42') && Date.now() < deadline) {
      holdEventLoop(700);
      await new Promise((r) => setImmediate(r));
    }
    await until(async () => (await driver.consoleHistory('chatty')).includes('END-42'), { timeoutMs: 30_000, what: 'the end of the output' });
    const history = await driver.consoleHistory('chatty');
    // The guest's own reports (AWAN-MEM, AWAN-UPTIME, once a second) are whole writes that may land between two
    // of seq's, even mid-line: taking them out leaves exactly what seq printed.
    const output = history.slice(history.lastIndexOf('100000\r\n'), history.indexOf('END-42')).replace(/AWAN-[A-Z]+[^\r\n]*\r\n/g, '');
    const printed = output.split(/\r\n/).filter(Boolean);
    const expected = Array.from({ length: 3001 }, (_, i) => String(100000 + i));
    const wrong = printed.filter((line, i) => line !== expected[i]);
    assert.deepEqual(wrong.slice(0, 5), [], `${wrong.length} of ${printed.length} lines differ from what the guest printed`);
    assert.equal(printed.length, expected.length);
  });
});
