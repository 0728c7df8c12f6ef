// awan memory as a user runs it: borrow with --wait, list, show, make-permanent, return, and a refusal.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cliRunner } from './support/cli.ts';
import { type Cluster, startCluster } from './support/cluster.ts';
import { createVm } from './support/leases.ts';

describe('awan memory', () => {
  let c: Cluster;
  let config: string;
  const cli = cliRunner(() => ({ XDG_CONFIG_HOME: config, AWAN_SERVER: c.url }));
  const { awan, ok, json } = cli;

  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'awan-cli-memory-'));
    c = await startCluster({ hosts: 1, control: { heartbeatIntervalMs: 1000, memoryPolicy: { pressureCheckMs: 3_600_000 } } });
    await createVm(c, { name: 'cli-b', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 4096 });
    await ok('login', '--password', 'admin-password');
  });
  after(async () => {
    cli.close();
    await c?.close();
    rmSync(config, { recursive: true, force: true });
  });

  it('borrows, lists, shows, makes permanent, and refuses to return a permanent lease', async () => {
    const out = await ok('memory', 'borrow', 'cli-b', '--size', '256', '--ttl', '600', '--mechanism', 'grow', '--wait');
    assert.match(out, /succeeded/);
    const { items } = await json<{ items: { id: string; state: string; mechanism: string }[] }>('memory', 'list', '--vm', 'cli-b', '--json');
    assert.equal(items.length, 1);
    assert.equal(items[0].state, 'active');
    assert.match(await ok('memory', 'list'), /cli-b|grow/);
    assert.match(await ok('memory', 'show', items[0].id), /mechanism:\s+grow \(asked: grow\)/);
    assert.match(await ok('memory', 'make-permanent', items[0].id, '--wait'), /succeeded/);
    assert.equal((await c.api('GET', '/api/v1/vms/cli-b')).body.memoryMiB, 1280);
    const r = await awan(['memory', 'return', items[0].id]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /INVALID_STATE.*permanent/);
  });

  it('returns a temporary lease with --wait', async () => {
    const out = await ok('memory', 'borrow', 'cli-b', '--size', '128', '--wait');
    assert.match(out, /succeeded/);
    const { items } = await json<{ items: { id: string; kind: string }[] }>('memory', 'list', '--state', 'active', '--json');
    const lease = items.find((l) => l.kind === 'temporary');
    assert.ok(lease, JSON.stringify(items));
    assert.match(await ok('memory', 'return', lease.id, '--wait'), /succeeded/);
    assert.equal((await c.api('GET', `/api/v1/memory/leases/${lease.id}`)).body.state, 'returned');
  });
});
