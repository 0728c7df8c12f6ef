// The CLI as scripts and newcomers use it: the server it remembers, a piped password, defaults, --json on
// every command, exit codes, errors in CLI words, and a console that ends by itself.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { Command } from 'commander';
import { commandPath, inCliWords } from '../src/cli/commands/fields.ts';
import { linesOf } from '../src/cli/commands/prompt.ts';
import { buildProgram } from '../src/cli/program.ts';
import { type Live, cliRunner } from './support/cli.ts';
import { type Cluster, startCluster } from './support/cluster.ts';
import { until } from './until.ts';

/** Every command a user can run: the leaves of the tree (`awan vm create`, not `awan vm`). */
function leaves(cmd: Command): Command[] {
  return cmd.commands.length === 0 ? [cmd] : cmd.commands.flatMap(leaves);
}

const find = (program: Command, path: string) => leaves(program).find((c) => commandPath(c) === `awan ${path}`)!;

/** The exit code of a process that should end by itself; 'still open' (not a hang) when it does not. */
const ended = (live: Live) =>
  until(async () => (live.child.exitCode !== null ? { code: live.child.exitCode } : undefined), { timeoutMs: 15_000, what: 'the command to end' })
    .then(async (r) => {
      await live.exited; // all of its output read
      return r.code;
    }, () => 'still open');

async function deadPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

describe('awan CLI commands and words', () => {
  const program = buildProgram([]);

  it('every command has --json', () => {
    const all = leaves(program);
    assert.ok(all.length >= 25, `only ${all.length} commands found`);
    const without = all.filter((c) => !c.options.some((o) => o.long === '--json')).map(commandPath);
    assert.deepEqual(without, []);
  });

  it('names API fields by the flags that set them', () => {
    assert.equal(inCliWords(find(program, 'vm create'), 'body.diskGiB must be <= 65536'), '--disk must be <= 65536');
    assert.equal(inCliWords(find(program, 'vm create'), 'body.memoryMiB must be >= 16'), '--memory must be >= 16');
    assert.equal(inCliWords(find(program, 'vm create'), 'body.placementLabels.zone must be string'), '--label must be string');
    assert.equal(inCliWords(find(program, 'vm create'), 'body.name must match pattern "^x$"'), 'NAME must match pattern "^x$"');
    assert.equal(inCliWords(find(program, 'vm create'), "body must have required property 'cpus'"), '--cpus is required');
    assert.equal(inCliWords(find(program, 'task list'), 'querystring.limit must be <= 1000'), '--limit must be <= 1000');
    assert.equal(inCliWords(find(program, 'task list'), 'querystring.targetId must be string'), '--target must be string');
    assert.equal(inCliWords(find(program, 'vm memory'), 'body.targetMiB must be >= 16'), '--target must be >= 16');
    assert.equal(inCliWords(find(program, 'vm migrate'), 'body.host must be string'), '--to must be string');
    assert.equal(inCliWords(find(program, 'image create'), 'body.kernelPath is not allowed'), '--kernel is not allowed');
    assert.equal(inCliWords(find(program, 'vm show'), 'params.id must be string'), 'NAME must be string');
    // Words that only look like a location stay as they are.
    assert.equal(inCliWords(find(program, 'vm create'), 'the body is not valid JSON'), 'the body is not valid JSON');
  });

  it('reads piped passwords one per line', async () => {
    assert.deepEqual(await linesOf(Readable.from(['s3cr', 'et\r\nnext line\n'])), ['s3cret', 'next line']);
    assert.deepEqual(await linesOf(Readable.from(['last line without newline'])), ['last line without newline']);
    assert.deepEqual(await linesOf(Readable.from([])), []);
  });
});

describe('awan CLI against a cluster: scripts and newcomers', () => {
  let c: Cluster;
  let config: string;
  const cli = cliRunner(() => ({ XDG_CONFIG_HOME: config, AWAN_SERVER: c.url }));
  const { awan, ok, json } = cli;

  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'awan-cli-'));
    // Migrations crawl (1 MiB/s), so one can be cancelled while it runs.
    // Beats of 1 s rather than the suite's 200 ms: on a busy machine a slow child process must not make hosts
    // look unreachable under the VMs these tests create.
    c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: 1000 }, sim: { migrateMiBPerS: 1, failBoot: (spec) => (spec.name.startsWith('doomed') ? 'no bootable disk' : undefined) } });
    await ok('login', '--password', 'admin-password');
  });

  after(async () => {
    cli.close();
    await c?.close();
    rmSync(config, { recursive: true, force: true });
  });

  it('remembers the server it logged in to; AWAN_SERVER and --server still win', async () => {
    const home = mkdtempSync(join(tmpdir(), 'awan-cli-home-'));
    try {
      // No AWAN_SERVER here: only the login says where control is.
      const fresh = cliRunner(() => ({ XDG_CONFIG_HOME: home }));
      const login = await fresh.awan(['login', '--server', c.url, '--username', 'admin'], { input: 'admin-password\n' });
      assert.equal(login.code, 0, login.stderr);
      const path = join(home, 'awan', 'credentials.json');
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal((JSON.parse(readFileSync(path, 'utf8')) as { current: string }).current, c.url);

      const listed = await fresh.awan(['host', 'list']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, /^host-1\s+ready/m);

      const dead = `http://127.0.0.1:${await deadPort()}`;
      for (const r of [await fresh.awan(['host', 'list'], { env: { AWAN_SERVER: dead } }), await fresh.awan(['--server', dead, 'host', 'list'])]) {
        assert.equal(r.code, 1);
        assert.match(r.stderr, new RegExp(`cannot reach awan control at ${dead} `));
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('login reads the password from standard input when it is not a terminal', async () => {
    const piped = await awan(['login', '--username', 'admin'], { input: 'admin-password\n' });
    assert.equal(piped.code, 0, piped.stderr);
    assert.match(piped.stdout, /^logged in to \S+ as admin \(admin\)/);
    const wrong = await awan(['login', '--username', 'admin'], { input: 'not-it\n' });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /^error UNAUTHORIZED: wrong username or password$/m);
    const empty = await awan(['login'], { input: '' });
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /no password given: .*pipe it on standard input/);
  });

  it('vm create needs only a name: 1 CPU and 512 MiB, and its help says so', async () => {
    const help = await ok('vm', 'create', '--help');
    assert.match(help, /^Usage: awan vm create \[options\] <name>/m);
    assert.match(help, /name of the new VM \(required\)/);
    assert.match(help, /--cpus <n>\s+virtual CPUs \(default: 1\)/);
    assert.match(help, /--memory <MiB>\s+memory in MiB \(default: 512\)/);
    assert.match(help, /Only NAME is required/);

    const r = await json<{ vm: { name: string; cpus: number; memoryMiB: number; phase: string }; task: { state: string } }>('vm', 'create', 'plain', '--wait');
    assert.deepEqual([r.vm.name, r.vm.cpus, r.vm.memoryMiB, r.task.state], ['plain', 1, 512, 'succeeded']);
    assert.equal((await json<{ phase: string }>('vm', 'show', 'plain')).phase, 'running');
  });

  it('--json answers of changes parse, errors go to stderr as the API\'s error body', async () => {
    const login = await json<{ server: string; user: { username: string } }>('login', '--password', 'admin-password');
    assert.deepEqual([login.server, login.user.username], [c.url, 'admin']);
    const stopped = await json<{ vm: { name: string }; task: { state: string } }>('vm', 'stop', 'plain', '--force', '--wait');
    assert.deepEqual([stopped.vm.name, stopped.task.state], ['plain', 'succeeded']);
    assert.equal((await json<{ diskGiB: number }>('vm', 'resize', 'plain', '--disk', '3')).diskGiB, 3);
    assert.equal((await json<{ name: string; state: string }>('host', 'activate', 'host-1')).name, 'host-1');
    const file = join(c.dir, 'tiny.raw'); // the cluster's directory is its image directory
    writeFileSync(file, Buffer.alloc(1024 * 1024));
    await ok('image', 'create', 'tiny', '--format', 'raw', '--path', file);
    assert.equal((await json<{ deleted: { name: string } }>('image', 'delete', 'tiny')).deleted.name, 'tiny');
    const pools = await json<{ items: { name: string; type: string }[] }>('pool', 'list');
    assert.ok(pools.items.some((p) => p.name === 'shared' && p.type === 'shared'));
    assert.equal((await json<{ name: string }>('pool', 'show', 'shared')).name, 'shared');
    assert.deepEqual((await json<{ items: unknown[] }>('volume', 'list', '--pool', 'shared')).items, []);
    const noVolume = await awan(['volume', 'show', 'nope', '--json']);
    assert.equal((JSON.parse(noVolume.stderr) as { error: { code: string } }).error.code, 'VOLUME_NOT_FOUND');

    const missing = await awan(['vm', 'show', 'no-such-vm', '--json']);
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout, '');
    assert.deepEqual(JSON.parse(missing.stderr), { error: { code: 'VM_NOT_FOUND', message: 'VM no-such-vm not found', details: { id: 'no-such-vm' } } });
    // Commander's own complaints too: a script reads one shape.
    const noName = await awan(['vm', 'create', '--json']);
    assert.equal(noName.code, 1);
    assert.equal((JSON.parse(noName.stderr) as { error: { code: string; message: string } }).error.code, 'BAD_REQUEST');
  });

  it('a failed task exits 1, with --json its task on stdout and its error on stderr', async () => {
    const r = await awan(['vm', 'create', 'doomed-1', '--wait', '--json']);
    assert.equal(r.code, 1);
    const answer = JSON.parse(r.stdout) as { vm: { name: string }; task: { state: string } };
    assert.deepEqual([answer.vm.name, answer.task.state], ['doomed-1', 'failed']);
    const err = JSON.parse(r.stderr) as { error: { code: string; message: string } };
    assert.equal(err.error.code, 'BOOT_FAILED');
    assert.match(err.error.message, /no bootable disk/);
  });

  it('a cancelled task exits 1, from --wait and from task watch', async () => {
    await ok('vm', 'create', 'mover', '--memory', '256', '--wait');
    const waiting = cli.spawn(['vm', 'migrate', 'mover', '--wait']);
    const id = await until(() => /^task (\S+) /.exec(waiting.stdout)?.[1], { what: 'migration task' });
    await until(async () => (await c.api<{ state: string; progress: number }>('GET', `/api/v1/tasks/${id}`)).body.state === 'running', { what: 'migration running' });
    const watching = cli.spawn(['task', 'watch', id]);
    assert.equal((await json<{ id: string }>('task', 'cancel', id)).id, id);
    for (const live of [waiting, watching]) {
      assert.equal(await live.exited, 1, live.stderr);
      assert.match(live.stderr, /^error CANCELLED: cancelled; the VM keeps running on its host$/m);
    }
  });

  it('says what to do in CLI words: the flag that was wrong, objects by name', async () => {
    const memory = await awan(['vm', 'create', 'tiny-vm', '--memory', '8']);
    assert.equal(memory.code, 1);
    assert.match(memory.stderr, /^error VALIDATION_FAILED: --memory must be at least 16 \(got 8\) \(see: awan vm create --help\)$/m);
    const disk = await awan(['vm', 'create', 'huge-vm', '--disk', '100000']);
    assert.match(disk.stderr, /^error VALIDATION_FAILED: --disk must be at most 65536 \(got 100000\)/m);
    const limit = await awan(['task', 'list', '--limit', '5000']);
    assert.equal(limit.code, 1);
    assert.match(limit.stderr, /^error VALIDATION_FAILED: --limit must be at most 1000 \(got 5000\) \(see: awan task list --help\)$/m);
    for (const r of [memory, disk, limit]) assert.doesNotMatch(r.stderr, /body|querystring|MiB must|GiB must/);

    // A task about a VM names the VM, not its id.
    const created = await ok('vm', 'create', 'named-1', '--no-start');
    const taskId = /^task (\S+) /.exec(created)![1];
    const vmId = (await json<{ id: string }>('vm', 'show', 'named-1')).id;
    const shown = await ok('task', 'show', taskId);
    assert.match(shown, /\svm\/named-1\s/);
    assert.doesNotMatch(shown, new RegExp(vmId));
  });

  it('vm console ends when its input ends, saying so once', async () => {
    await ok('vm', 'create', 'con-eof', '--wait');
    const r = cli.spawn(['vm', 'console', 'con-eof']);
    r.child.stdin!.end('uname -a\n');
    assert.equal(await ended(r), 0, r.stderr);
    await r.exited;
    assert.match(r.stdout, /con-eof login:/);
    assert.equal(r.stderr, 'console of con-eof closed: its input ended\n');
  });

  it('vm console ends when the VM stops (exit 0) or fails (exit 1), saying so once', async () => {
    const con = cli.spawn(['vm', 'console', 'con-eof']);
    await until(() => con.stdout.includes('con-eof login:'), { what: 'console history' });
    await c.api('POST', '/api/v1/vms/con-eof/stop', { force: true });
    assert.equal(await ended(con), 0, con.stderr);
    assert.equal(con.stderr, 'console of con-eof closed: VM con-eof is stopped\n');
    assert.doesNotMatch(con.stdout, /is stopped/);

    await ok('vm', 'create', 'con-crash', '--wait');
    const crashing = cli.spawn(['vm', 'console', 'con-crash']);
    await until(() => crashing.stdout.includes('con-crash login:'), { what: 'console history' });
    const vm = await json<{ id: string; hostId: string }>('vm', 'show', 'con-crash');
    c.hosts.find((h) => h.agent.hostId === vm.hostId)!.driver.crash(vm.id);
    assert.equal(await ended(crashing), 1, crashing.stderr);
    assert.match(crashing.stderr, /^error VM_FAILED: console of con-crash closed: VM con-crash is failed/);
    assert.equal(crashing.stderr.trim().split('\n').length, 1);
  });
});
