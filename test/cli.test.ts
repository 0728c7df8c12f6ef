// The awan client commands run as a real child process against an in-process cluster of 3 simulated hosts.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mib, table } from '../src/cli/commands/output.ts';
import { bar } from '../src/cli/commands/progress.ts';
import { cliRunner } from './support/cli.ts';
import { type Cluster, startCluster } from './support/cluster.ts';
import { until } from './until.ts';

interface VmJson {
  id: string;
  name: string;
  phase: string;
  hostId: string | null;
}

interface HostJson {
  id: string;
  name: string;
  state: string;
}

describe('awan CLI helpers', () => {
  it('aligns table columns and leaves no trailing blanks', () => {
    assert.equal(table(['NAME', 'STATE'], [['host-1', 'ready'], ['h2', 'maintenance']]), 'NAME    STATE\nhost-1  ready\nh2      maintenance');
  });
  it('shows memory in human units', () => {
    assert.deepEqual([mib(512), mib(1536), mib(16384), mib(2 * 1024 * 1024), mib(null)], ['512 MiB', '1.5 GiB', '16 GiB', '2 TiB', '-']);
  });
  it('draws a progress bar', () => {
    assert.equal(bar(50, 10), '[#####-----]  50%');
    assert.equal(bar(150, 4), '[####] 100%');
  });
});

describe('awan CLI against a cluster', () => {
  let c: Cluster;
  let config: string;
  const cli = cliRunner(() => ({ XDG_CONFIG_HOME: config, AWAN_SERVER: c.url }));
  const { awan, ok, json } = cli;

  /** A mutating command prints `task ID …` first; return the id. */
  async function taskOf(...args: string[]): Promise<string> {
    const out = await ok(...args);
    const m = /^task (\S+) /.exec(out);
    assert.ok(m, `no task id in: ${out}`);
    return m[1];
  }

  async function watchSucceeds(id: string): Promise<void> {
    const r = await awan(['task', 'watch', id]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, new RegExp(`task ${id} succeeded`));
  }

  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'awan-cli-'));
    // Beats of 1 s rather than 200 ms: CLI child processes load the machine, and hosts must not look
    // unreachable under the VMs these tests create.
    c = await startCluster({ hosts: 3, control: { heartbeatIntervalMs: 1000 }, sim: { failBoot: (spec) => (spec.name.startsWith('doomed') ? 'no bootable disk' : undefined) } });
  });

  after(async () => {
    cli.close();
    await c?.close();
    rmSync(config, { recursive: true, force: true });
  });

  it('login without a password and without a terminal fails with a clear message', async () => {
    const r = await awan(['login']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error BAD_REQUEST: no password given: type it when asked, pipe it on standard input/m);
  });

  it('login with a wrong password says so', async () => {
    const r = await awan(['login', '--password', 'not-it']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error UNAUTHORIZED: wrong username or password$/m);
  });

  it('login keeps the token in a private file keyed by server', async () => {
    await ok('login', '--username', 'admin', '--password', 'admin-password');
    const path = join(config, 'awan', 'credentials.json');
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const file = JSON.parse(readFileSync(path, 'utf8')) as { servers: Record<string, { token: string; username: string }> };
    assert.equal(file.servers[c.url].username, 'admin');
    assert.ok(file.servers[c.url].token.length > 10);
    const hosts = await json<{ items: HostJson[] }>('host', 'list');
    assert.deepEqual(hosts.items.map((h) => [h.name, h.state]).sort(), [['host-1', 'ready'], ['host-2', 'ready'], ['host-3', 'ready']]);
  });

  it('AWAN_PASSWORD works for login and AWAN_TOKEN overrides the stored token', async () => {
    assert.equal((await awan(['login'], { env: { AWAN_PASSWORD: 'admin-password' } })).code, 0);
    const r = await awan(['host', 'list'], { env: { AWAN_TOKEN: 'not-a-token' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error UNAUTHORIZED: /m);
  });

  it('creates 20 VMs that spread over the 3 hosts', async () => {
    const tasks: string[] = [];
    for (let i = 1; i <= 20; i++) tasks.push(await taskOf('vm', 'create', `vm-${String(i).padStart(2, '0')}`, '--cpus', '1', '--memory', '256'));
    for (const id of tasks) assert.equal((await c.waitTask(id)).state, 'succeeded');

    const { items } = await json<{ items: VmJson[] }>('vm', 'list');
    assert.equal(items.length, 20);
    assert.deepEqual(items.filter((v) => v.phase !== 'running'), []);
    const hosts = await json<{ items: HostJson[] }>('host', 'list');
    assert.deepEqual(new Set(items.map((v) => v.hostId)), new Set(hosts.items.map((h) => h.id)));

    const listed = await ok('vm', 'list', '--host', 'host-2');
    assert.match(listed, /^NAME\s+PHASE\s+HOST\s+CPUS\s+MEMORY/);
    assert.match(listed, /^vm-\d\d\s+running\s+host-2\s+1\s+256 MiB/m);
    assert.doesNotMatch(listed, /host-[13]/);
  });

  it('stops, starts, migrates and deletes a VM, following each task', async () => {
    await watchSucceeds(await taskOf('vm', 'stop', 'vm-01'));
    assert.equal((await json<VmJson>('vm', 'show', 'vm-01')).phase, 'stopped');

    await watchSucceeds(await taskOf('vm', 'start', 'vm-01'));
    const started = await json<VmJson>('vm', 'show', 'vm-01');
    assert.equal(started.phase, 'running');

    const hosts = (await json<{ items: HostJson[] }>('host', 'list')).items;
    const target = hosts.find((h) => h.id !== started.hostId);
    assert.ok(target);
    await watchSucceeds(await taskOf('vm', 'migrate', 'vm-01', '--to', target.name));
    const moved = await json<VmJson>('vm', 'show', 'vm-01');
    assert.deepEqual([moved.phase, moved.hostId], ['running', target.id]);

    await watchSucceeds(await taskOf('vm', 'delete', 'vm-01'));
    const gone = await awan(['vm', 'show', 'vm-01']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error VM_NOT_FOUND: /m);
  });

  it('--wait follows the task and exits 0 on success', async () => {
    const out = await ok('vm', 'stop', 'vm-02', '--force', '--wait');
    assert.match(out, /^stop \S+: 100% succeeded/m);
    assert.equal((await json<VmJson>('vm', 'show', 'vm-02')).phase, 'stopped');
  });

  it('a failed task exits 1 with its error code, from --wait and from task watch', async () => {
    const r = await awan(['vm', 'create', 'doomed', '--cpus', '1', '--memory', '128', '--wait']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error BOOT_FAILED: .*no bootable disk/m);
    const id = /^task (\S+) /.exec(r.stdout)?.[1];
    assert.ok(id, r.stdout);
    const watched = await awan(['task', 'watch', id]);
    assert.equal(watched.code, 1);
    assert.match(watched.stderr, /^error BOOT_FAILED: /m);
  });

  it('an unknown VM exits 1 with VM_NOT_FOUND', async () => {
    for (const args of [['vm', 'show', 'no-such-vm'], ['vm', 'stop', 'no-such-vm'], ['vm', 'migrate', 'no-such-vm', '--to', 'host-1']]) {
      const r = await awan(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, /^error VM_NOT_FOUND: VM no-such-vm not found$/m);
    }
  });

  it('a server that does not answer gets a clear message', async () => {
    // A port that was free a moment ago and has nothing listening now.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as { port: number };
    await new Promise((resolve) => probe.close(resolve));
    const r = await awan(['--server', `http://127.0.0.1:${port}`, 'vm', 'list']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`cannot reach awan control at http://127.0.0.1:${port} \\(ECONNREFUSED\\)`));
  });

  it('--json of every read command parses', async () => {
    const tasks = await json<{ items: { id: string; state: string }[] }>('task', 'list');
    assert.ok(tasks.items.length > 0);
    assert.ok(tasks.items.every((t) => typeof t.id === 'string'));
    assert.equal((await json<HostJson>('host', 'show', 'host-1')).name, 'host-1');
    assert.ok(Array.isArray((await json<{ items: unknown[] }>('image', 'list')).items));
    assert.equal((await json<VmJson>('vm', 'show', 'vm-03')).name, 'vm-03');
    assert.deepEqual((await json<{ items: VmJson[] }>('vm', 'list', '--name', 'vm-0', '--phase', 'stopped')).items.map((v) => v.name), ['vm-02']);
  });

  it('registers, shows and deletes an image', async () => {
    const file = join(c.dir, 'disk.raw'); // the cluster's directory is its image directory
    writeFileSync(file, Buffer.alloc(2 * 1024 * 1024));
    assert.match(await ok('image', 'create', 'tiny', '--format', 'raw', '--path', file, '--os', 'none'), /^image tiny registered/);
    assert.equal((await json<{ name: string; format: string }>('image', 'show', 'tiny')).format, 'raw');
    assert.match(await ok('image', 'list'), /^tiny\s+raw\s+2 MiB\s+none/m);
    await ok('image', 'delete', 'tiny');
    const gone = await awan(['image', 'show', 'tiny']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error IMAGE_NOT_FOUND: /m);
  });

  it('opens a VM console, sends keystrokes, and leaves on Ctrl-]', async () => {
    await ok('vm', 'create', 'console-vm', '--cpus', '1', '--memory', '256', '--wait');
    const con = cli.spawn(['vm', 'console', 'console-vm']);
    await until(() => con.stdout.includes('console-vm login:'), { what: 'console history' });
    con.child.stdin!.write('hello there\n');
    await until(() => con.stdout.includes('hello there'), { what: 'echo' });
    con.child.stdin!.write('\x1d');
    assert.equal(await con.exited, 0);
    assert.match(con.stderr, /^console of console-vm closed: you left the console$/m);
  });

  it('moves a VM\'s memory and refuses an unknown VM\'s console', async () => {
    await ok('vm', 'memory', 'console-vm', '--target', '128', '--wait');
    await until(async () => JSON.parse(await ok('vm', 'show', 'console-vm', '--json')).memoryActualMiB === 128, { what: 'memory 128' });
    const r = await awan(['vm', 'console', 'no-such-vm']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /VM no-such-vm not found/);
  });

  it('grows a stopped VM\'s disk, and refuses to cancel a finished task', async () => {
    const created = await ok('vm', 'create', 'disk-vm', '--cpus', '1', '--memory', '128', '--no-start');
    assert.match(created, /^task \S+ succeeded/);
    assert.match(await ok('vm', 'resize', 'disk-vm', '--disk', '20'), /disk-vm disk is 20 GiB/);
    const taskId = created.split(' ')[1];
    const r = await awan(['task', 'cancel', taskId]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error INVALID_STATE: task \S+ already succeeded/);
  });
});
