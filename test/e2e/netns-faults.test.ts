// The fault tools on a real network of namespaces: a host cut from control keeps its other paths and its TCP
// connections survive the cut; links go down and up again; flaps end restored; hung and killed processes.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { createFaults, type Faults } from '../support/faults.ts';
import { createTestNetwork, removeTestNetwork, type TestNetwork } from '../support/netns.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const INSTALL = 'apt-get install iproute2';
const PORT = 7007;
const prefix = `af${process.pid % 10000}`;
/** A healthy path answers within this on any machine; a cut one never does. */
const LONG_MS = 30_000;
/** How long a probe of a cut path listens for an answer that must not come. */
const SHORT_MS = 3_000;

const ECHO = `require('net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(${PORT}, '0.0.0.0', () => console.log('listening'));`;
const probeScript = (address: string, waitMs: number) =>
  `const s = require('net').connect(${PORT}, '${address}', () => { console.log('ok'); process.exit(0); });
   s.on('error', (e) => { console.log(e.code); process.exit(1); });
   setTimeout(() => { console.log('timeout'); process.exit(2); }, ${waitMs});`;
/** Stays connected: stdin goes to the echo server, what comes back to stdout. */
const CLIENT = (address: string) =>
  `const s = require('net').connect(${PORT}, '${address}', () => console.log('connected'));
   process.stdin.pipe(s); s.pipe(process.stdout);
   s.on('error', (e) => console.log('error ' + e.code)); s.on('close', () => console.log('closed'));`;

function state(pid: number): string {
  try {
    return /\) (\S) /.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? '?';
  } catch {
    return 'gone';
  }
}

describe('fault tools on a network of namespaces', { timeout: 10 * 60_000 }, () => {
  let net: TestNetwork;
  let faults: Faults;
  const children: ChildProcess[] = [];

  /** Runs node with `script` in namespace `ns` (or here, for the root namespace); its stdout is collected. */
  function node(ns: string | undefined, script: string): { child: ChildProcess; out: () => string } {
    const argv = [process.execPath, '-e', script];
    const [cmd, ...args] = ns ? net.inNs(ns, argv) : argv;
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d.toString()));
    return { child, out: () => out };
  }

  /** A new TCP connection from `ns` to `address`: `ok`, `timeout` (no answer in `waitMs`), or an error code. */
  async function probe(ns: string | undefined, address: string, waitMs: number): Promise<string> {
    const p = node(ns, probeScript(address, waitMs));
    await new Promise((r) => p.child.once('exit', r));
    return p.out().trim();
  }

  const host = (name: string) => net.hosts.find((h) => h.name === name)!;

  before(async () => {
    requireCommand('ip', INSTALL);
    await removeTestNetwork(prefix);
    net = await createTestNetwork(prefix, ['h1', 'h2']);
    faults = createFaults(net);
    for (const ns of [net.bridgeNs, host('h1').ns, host('h2').ns]) {
      const server = node(ns, ECHO);
      await until(() => server.out().includes('listening'), { timeoutMs: LONG_MS, what: `echo server in ${ns}` });
    }
  });

  after(async () => {
    faults?.clear();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await removeTestNetwork(prefix);
  });

  it('cuts a host from control both ways, keeps its other paths, and its connection resumes when restored', async () => {
    const h1 = host('h1');
    const h2 = host('h2');
    const conn = node(h1.ns, CLIENT(net.bridgeAddress));
    conn.child.stdin!.write('before\n');
    await until(() => conn.out().includes('before'), { timeoutMs: LONG_MS, what: 'an echo from control' });

    const id = faults.cutFromControl('h1');
    assert.deepEqual(faults.active(), [{ id, kind: 'cut', target: 'h1 x control' }]);
    conn.child.stdin!.write('during\n');
    // Silence, not an error: a partition drops packets, it does not refuse them.
    assert.equal(await probe(h1.ns, net.bridgeAddress, SHORT_MS), 'timeout', 'h1 reaches control');
    assert.equal(await probe(net.bridgeNs, h1.address, SHORT_MS), 'timeout', 'control reaches h1');
    assert.equal(await probe(h1.ns, h2.address, LONG_MS), 'ok', 'h1 reaches h2');
    assert.equal(await probe(h2.ns, h1.address, LONG_MS), 'ok', 'h2 reaches h1');
    assert.equal(await probe(net.bridgeNs, h2.address, LONG_MS), 'ok', 'control reaches h2');
    assert.equal(await probe(undefined, h1.address, LONG_MS), 'ok', 'the test reaches h1');
    assert.doesNotMatch(conn.out(), /during|error|closed/, 'nothing crossed the cut, and the connection is not broken');

    faults.restore(id);
    assert.deepEqual(faults.active(), []);
    await until(() => conn.out().includes('during'), { timeoutMs: LONG_MS, what: 'the held-back data arriving after the restore' });
    assert.equal(await probe(h1.ns, net.bridgeAddress, LONG_MS), 'ok');
    assert.equal(await probe(net.bridgeNs, h1.address, LONG_MS), 'ok');
    assert.doesNotMatch(conn.out(), /error|closed/);
    conn.child.kill('SIGKILL');
  });

  it('undoes overlapping cuts of the same path only when the last one goes', async () => {
    const h1 = host('h1');
    const a = faults.cutFromControl('h1');
    const b = faults.cutPaths('h1', ['control', 'h2']);
    faults.restore(a);
    assert.equal(await probe(h1.ns, net.bridgeAddress, SHORT_MS), 'timeout', 'still cut by the second fault');
    assert.equal(await probe(h1.ns, host('h2').address, SHORT_MS), 'timeout', 'h2 is cut too');
    faults.restore(b);
    faults.restore(b); // a second undo does nothing
    assert.equal(await probe(h1.ns, net.bridgeAddress, LONG_MS), 'ok');
    assert.equal(await probe(h1.ns, host('h2').address, LONG_MS), 'ok');
  });

  it('takes all of a host\'s links down and up again', async () => {
    const h1 = host('h1');
    const id = faults.cutAllLinks('h1');
    assert.notEqual(await probe(h1.ns, host('h2').address, SHORT_MS), 'ok');
    assert.notEqual(await probe(h1.ns, net.bridgeAddress, SHORT_MS), 'ok');
    assert.notEqual(await probe(undefined, h1.address, SHORT_MS), 'ok');
    faults.restore(id);
    assert.equal(await until(async () => (await probe(h1.ns, net.bridgeAddress, LONG_MS)) === 'ok', { timeoutMs: LONG_MS, what: 'h1 reaching control again' }), true);
    assert.equal(await probe(undefined, h1.address, LONG_MS), 'ok');
  });

  it('flaps a host\'s path to control a bounded number of times and ends restored, also when aborted', async () => {
    const h1 = host('h1');
    await assert.rejects(faults.flap('h1', { times: 1000, downMs: 10, upMs: 10 }), /times must be 1..100/);
    await assert.rejects(faults.flap('h1', { times: 2, downMs: 600_000, upMs: 10 }), /durations must be/);
    const neigh = () => execFileSync('ip', ['-n', h1.ns, 'neigh', 'show', net.bridgeAddress], { encoding: 'utf8' });
    let cutSeen = 0;
    let wasCut = false;
    const watch = setInterval(() => {
      const cut = neigh().includes('PERMANENT');
      if (cut && !wasCut) cutSeen++;
      wasCut = cut;
    }, 20);
    try {
      await faults.flap('h1', { times: 3, downMs: 500, upMs: 500 });
    } finally {
      clearInterval(watch);
    }
    assert.ok(cutSeen >= 1, 'the path went down during the flap');
    assert.doesNotMatch(neigh(), /PERMANENT/);
    assert.deepEqual(faults.active(), []);

    const abort = new AbortController();
    const flapping = faults.flap('h1', { times: 100, downMs: 60_000, upMs: 10, signal: abort.signal });
    await until(() => faults.active().length === 1, { what: 'the flap cutting' });
    abort.abort(new Error('enough'));
    await assert.rejects(flapping, /enough/);
    assert.deepEqual(faults.active(), []);
    assert.equal(await probe(h1.ns, net.bridgeAddress, LONG_MS), 'ok');
  });

  it('hangs a process and lets it go on, then kills every process of a host by pid', async () => {
    const h2 = host('h2');
    const sleeper = spawn(net.inNs(h2.ns, ['sleep', '600'])[0], net.inNs(h2.ns, ['sleep', '600']).slice(1), { stdio: 'ignore' });
    children.push(sleeper);
    const pid = sleeper.pid!;
    await until(() => faults.pidsOf('h2').includes(pid), { timeoutMs: LONG_MS, what: 'sleep in h2' });
    const id = faults.hang(pid);
    await until(() => state(pid) === 'T', { timeoutMs: LONG_MS, what: 'the process stopped' });
    faults.restore(id);
    await until(() => state(pid) === 'S', { timeoutMs: LONG_MS, what: 'the process running again' });

    const before = faults.pidsOf('h2');
    assert.ok(before.length >= 2, `the echo server and sleep run in h2: ${before.join(', ')}`);
    const h1Pids = faults.pidsOf('h1');
    const killed = await faults.killHost('h2');
    assert.deepEqual([...killed].sort(), [...before].sort());
    assert.deepEqual(faults.pidsOf('h2'), []);
    assert.ok(h1Pids.every((p) => !['gone', 'Z', 'X'].includes(state(p))), 'h1 keeps its processes');
    assert.equal(await probe(host('h1').ns, net.bridgeAddress, LONG_MS), 'ok', 'the network itself is still there');
  });
});
