// QMP client against a scripted fake server on a unix socket, then against a real QEMU.
import { describe, it, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { QmpClient, QmpClosedError, QmpError, QmpTimeoutError, type QmpEvent } from './qmp.ts';
import { QmpDecodeError } from './qmp-commands.ts';
import { killProcessesMentioning, requireQemu, tempDir } from './test-support.ts';
import { until } from '../../../test/until.ts';

interface Request {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

/** A fake QMP server: sends the greeting, answers qmp_capabilities, then hands requests to `onRequest`. */
async function fakeQmp(
  path: string,
  onRequest: (req: Request, reply: (msg: object) => void, conn: Socket) => void,
): Promise<{ server: Server; connections: Socket[]; requests: Request[] }> {
  const connections: Socket[] = [];
  const requests: Request[] = [];
  const server = createServer((conn) => {
    connections.push(conn);
    conn.setEncoding('utf8');
    const reply = (msg: object): void => void conn.write(`${JSON.stringify(msg)}\n`);
    reply({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 9 }, package: '' }, capabilities: [] } });
    let buf = '';
    conn.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl)) as Request;
        buf = buf.slice(nl + 1);
        requests.push(req);
        if (req.execute === 'qmp_capabilities') reply({ return: {}, id: req.id });
        else onRequest(req, reply, conn);
      }
    });
    conn.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { server, connections, requests };
}

describe('QMP client (fake server)', () => {
  const dir = tempDir('qmp');
  const sock = join(dir.path, 'qmp.sock');
  let server: Server | undefined;
  let client: QmpClient | undefined;
  afterEach(async () => {
    client?.close();
    client = undefined;
    if (server) await new Promise((r) => server?.close(r));
    server = undefined;
  });
  after(() => dir.remove());

  it('negotiates capabilities and matches answers to requests by id, in any order', async () => {
    const held: Array<{ req: Request; reply: (msg: object) => void }> = [];
    const fake = await fakeQmp(sock, (req, reply) => {
      held.push({ req, reply });
      if (held.length === 2) {
        // Answer the second request first.
        held[1].reply({ return: { actual: 128 * 1024 * 1024 }, id: held[1].req.id });
        held[0].reply({ return: { running: true, status: 'running' }, id: held[0].req.id });
      }
    });
    server = fake.server;
    client = await QmpClient.connect(sock);
    assert.equal(client.version, '7.2.9');
    assert.equal(fake.requests[0].execute, 'qmp_capabilities');
    const [status, balloon] = await Promise.all([client.call('query-status', undefined), client.call('query-balloon', undefined)]);
    assert.deepEqual(status, { running: true, status: 'running' });
    assert.deepEqual(balloon, { actual: 128 * 1024 * 1024 });
    assert.notEqual(fake.requests[1].id, fake.requests[2].id);
  });

  it('sends arguments and turns a QMP error into a QmpError with its class', async () => {
    const fake = await fakeQmp(sock, (req, reply) => {
      reply({ error: { class: 'DeviceNotFound', desc: `no ${String(req.arguments?.path)}` }, id: req.id });
    });
    server = fake.server;
    client = await QmpClient.connect(sock);
    const err = await client.call('qom-get', { path: 'nope', property: 'x' }).catch((e: unknown) => e);
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'DeviceNotFound');
    assert.match(err.message, /no nope/);
    assert.deepEqual(fake.requests[1].arguments, { path: 'nope', property: 'x' });
  });

  it('refuses a malformed answer to a typed command', async () => {
    server = (await fakeQmp(sock, (req, reply) => reply({ return: { running: 'yes' }, id: req.id }))).server;
    client = await QmpClient.connect(sock);
    await assert.rejects(client.call('query-status', undefined), QmpDecodeError);
  });

  it('times out one command without disturbing the next', async () => {
    let first = true;
    server = (
      await fakeQmp(sock, (req, reply) => {
        if (first) {
          first = false;
          return; // never answered in time
        }
        reply({ return: {}, id: req.id });
      })
    ).server;
    client = await QmpClient.connect(sock);
    await assert.rejects(client.call('stop', undefined, { timeoutMs: 50 }), QmpTimeoutError);
    await client.call('cont', undefined);
    assert.equal(client.closed, false);
  });

  it('delivers events to named and wildcard listeners, and waitForEvent filters them', async () => {
    const fake = await fakeQmp(sock, (req, reply) => reply({ return: {}, id: req.id }));
    server = fake.server;
    client = await QmpClient.connect(sock);
    const named: QmpEvent[] = [];
    const all: QmpEvent[] = [];
    const off = client.on('BALLOON_CHANGE', (e) => named.push(e));
    client.on('*', (e) => all.push(e));
    const waited = client.waitForEvent('BALLOON_CHANGE', { filter: (e) => e.data.actual === 2 });
    const conn = fake.connections[0];
    const ev = (actual: number): string =>
      `${JSON.stringify({ event: 'BALLOON_CHANGE', data: { actual }, timestamp: { seconds: 1, microseconds: 2 } })}\n`;
    conn.write(ev(1) + ev(2));
    conn.write(`${JSON.stringify({ event: 'STOP', timestamp: { seconds: 3, microseconds: 0 } })}\n`);
    assert.equal((await waited).data.actual, 2);
    await until(() => all.length === 3, { what: 'three events' });
    off();
    conn.write(ev(3));
    await until(() => all.length === 4, { what: 'fourth event' });
    assert.deepEqual(named.map((e) => e.data.actual), [1, 2]);
    assert.deepEqual(all[2], { event: 'STOP', data: {}, timestamp: { seconds: 3, microseconds: 0 } });
  });

  it('rejects pending calls and waiters when the server closes the socket', async () => {
    const fake = await fakeQmp(sock, (_req, _reply, conn) => conn.destroy());
    server = fake.server;
    client = await QmpClient.connect(sock);
    const closed: Error[] = [];
    client.onClose((e) => closed.push(e));
    const waiter = client.waitForEvent('SHUTDOWN');
    await assert.rejects(client.call('query-status', undefined), QmpClosedError);
    await assert.rejects(waiter, QmpClosedError);
    assert.equal(client.closed, true);
    assert.equal(closed.length, 1);
    await assert.rejects(client.call('cont', undefined), QmpClosedError);
  });

  it('fails to connect when nothing listens, and when no greeting comes in time', async () => {
    await assert.rejects(QmpClient.connect(sock, { timeoutMs: 1000 }), QmpClosedError);
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(sock, r));
    server = silent;
    await assert.rejects(QmpClient.connect(sock, { timeoutMs: 100 }), QmpTimeoutError);
  });
});

describe('QMP client (real QEMU)', () => {
  const dir = tempDir('qmpreal');
  let qemu: ChildProcess | undefined;
  after(() => {
    if (qemu?.pid && qemu.exitCode === null) qemu.kill('SIGKILL');
    killProcessesMentioning(dir.path);
    dir.remove();
  });

  it('queries status, sees STOP/RESUME events, and sees the socket close on quit', async () => {
    requireQemu();
    const sock = join(dir.path, 'qmp.sock');
    // An empty machine: no guest needed to exercise the protocol.
    qemu = spawn('qemu-system-x86_64', ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], {
      stdio: 'ignore',
    });
    const client = await until(() => QmpClient.connect(sock, { timeoutMs: 2000 }), { timeoutMs: 20_000, what: 'QMP socket' });
    try {
      assert.match(client.version, /^\d+\.\d+\.\d+$/);
      assert.equal((await client.call('query-status', undefined)).status, 'running');
      const stopped = client.waitForEvent('STOP', { timeoutMs: 5000 });
      await client.call('stop', undefined);
      await stopped;
      assert.deepEqual(await client.call('query-status', undefined), { running: false, status: 'paused' });
      const resumed = client.waitForEvent('RESUME', { timeoutMs: 5000 });
      await client.call('cont', undefined);
      await resumed;
      const err = await client.execute('no-such-command').catch((e: unknown) => e);
      assert.ok(err instanceof QmpError);
      assert.equal(err.errorClass, 'CommandNotFound');
      const closed = new Promise<Error>((resolve) => client.onClose(resolve));
      await client.call('quit', undefined);
      assert.ok((await closed) instanceof QmpClosedError);
      await until(() => qemu?.exitCode !== null, { what: 'qemu to exit' });
    } finally {
      client.close();
    }
  });
});
