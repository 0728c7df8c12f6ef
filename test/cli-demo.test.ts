// What `awan demo` shows: its banner stays in sight (no info lines around it), logs are readable on a
// terminal and JSON lines everywhere else.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { createLogger } from '../src/lib/logger.ts';
import { cliRunner } from './support/cli.ts';
import { until } from './until.ts';

/** A stream that keeps what is written to it, and says it is a terminal or not. */
function sink(isTTY: boolean): Writable & { isTTY: boolean; text: () => string } {
  const chunks: string[] = [];
  const w = new Writable({ write(chunk: Buffer, _enc, done) { chunks.push(chunk.toString()); done(); } });
  return Object.assign(w, { isTTY, text: () => chunks.join('') });
}

describe('logs', () => {
  it('are pretty lines on a terminal and JSON lines elsewhere', () => {
    const tty = sink(true);
    createLogger('control', 'info', { destination: tty }).info({ hostId: 'h1' }, 'host joined');
    const seen = tty.text().replace(/\x1b\[[0-9;]*m/g, '');
    assert.match(seen, /INFO \(control\): host joined\n\s+hostId: "h1"/);
    assert.notEqual(seen, tty.text(), 'coloured on a terminal');

    const pipe = sink(false);
    createLogger('control', 'info', { destination: pipe }).info({ hostId: 'h1' }, 'host joined');
    const line = JSON.parse(pipe.text()) as { level: number; name: string; msg: string; hostId: string };
    assert.deepEqual([line.level, line.name, line.msg, line.hostId], [30, 'control', 'host joined', 'h1']);

    const forced = sink(true);
    createLogger('control', 'info', { destination: forced, format: 'json' }).info('plain');
    assert.equal((JSON.parse(forced.text()) as { msg: string }).msg, 'plain');
  });
});

describe('awan demo', () => {
  const dir = mkdtempSync(join(tmpdir(), 'awan-demo-'));
  const cli = cliRunner(() => ({ XDG_CONFIG_HOME: join(dir, 'config'), AWAN_ADMIN_PASSWORD: 'demo-password' }));
  after(() => {
    cli.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps its banner in sight: no info log lines before or after it, while it works', async () => {
    const demo = cli.spawn(['demo', '--hosts', '2', '--port', '0', '--data-dir', join(dir, 'demo')]);
    await until(() => demo.stdout.includes('Ctrl-C stops everything.'), { timeoutMs: 60_000, what: 'the banner' });
    const url = /API and docs\s+(http:\/\/\S+)\/docs/.exec(demo.stdout)?.[1];
    assert.ok(url, demo.stdout);
    assert.match(demo.stdout, /login\s+admin \/ demo-password/);

    // Work that logs at info level in control and on the hosts.
    const login = await cli.awan(['login', '--server', url], { input: 'demo-password\n' });
    assert.equal(login.code, 0, login.stderr);
    for (const name of ['web-1', 'web-2']) assert.equal((await cli.awan(['vm', 'create', name, '--wait'])).code, 0);
    assert.equal((await cli.awan(['vm', 'stop', 'web-1', '--wait'])).code, 0);
    demo.child.kill('SIGTERM');
    assert.equal(await demo.exited, 0, demo.stderr);

    const banner = demo.stdout.slice(demo.stdout.indexOf('\nawan demo is running'), demo.stdout.indexOf('Ctrl-C stops everything.'));
    const others = demo.stdout.replace(banner, '').replace('Ctrl-C stops everything.', '').split('\n').filter((l) => l.trim());
    // Not a terminal here, so any log line is JSON; only warnings and errors may show up in a demo.
    const quiet = others.filter((l) => (JSON.parse(l) as { level: number }).level < 40);
    assert.deepEqual(quiet, []);
  });
});
