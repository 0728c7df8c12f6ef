// The console history against QEMU's logfile: what a connection delivered is never copied again, what
// nobody read is, and a new QEMU's boot starts from a settled history, even after a crash while connected.
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { appendHistory, catchUpConsole } from './console.ts';

describe('console catch-up', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-console-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const files = { socket: join(dir, 'serial.sock'), qemuLog: join(dir, 'serial.log'), history: join(dir, 'console.log'), offset: join(dir, 'console.offset') };
  const history = () => readFileSync(files.history, 'utf8');
  const record = appendHistory(files.history);

  it('copies only what no connection delivered, when the process holding the connection died', () => {
    writeFileSync(files.qemuLog, 'early ');
    writeFileSync(files.history, '');
    catchUpConsole(files, record, true); // a connection opens
    assert.equal(history(), 'early ');
    // The connection delivers the first boot's output (the logfile gets it too), then its process is killed.
    appendFileSync(files.qemuLog, 'boot one READY ');
    appendFileSync(files.history, 'boot one READY ');
    // QEMU goes on logging while nobody reads.
    appendFileSync(files.qemuLog, 'unread ');
    // A new QEMU is about to start: the history is settled first.
    catchUpConsole(files, record, false);
    assert.equal(history(), 'early boot one READY unread ', 'nothing repeated, nothing lost');
    // The new boot's output before its connection opens is copied then, and only it.
    appendFileSync(files.qemuLog, 'boot two ');
    catchUpConsole(files, record, true);
    assert.equal(history(), 'early boot one READY unread boot two ');
  });

  it('reads the offset earlier releases wrote, a plain number', () => {
    writeFileSync(files.qemuLog, 'abcdef');
    writeFileSync(files.history, 'abc');
    writeFileSync(files.offset, '3');
    catchUpConsole(files, record, false);
    assert.equal(history(), 'abcdef');
  });
});
