// Control copies no image file into a pool and deletes none: an import is refused with the way to register
// the file in place; a copy an earlier control made is deleted with its image by a host, through the pool;
// a file registered by path is never deleted.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

describe('imported images', () => {
  let c: Cluster;
  before(async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    c = await startCluster({ hosts: 1, fileStorage: true });
  });
  after(async () => { await c?.close(); });

  const file = (path: string) => {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, Buffer.alloc(1024 * 1024, 7));
    return path;
  };

  it('refuses an import, naming the image directories to put the file in, and writes nothing in the pool', async () => {
    const from = file(join(c.dir, 'src.raw'));
    const r = await c.api('POST', '/api/v1/images', { name: 'copy', format: 'raw', path: from, import: true });
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'UNSUPPORTED');
    assert.match(r.body.error.message, /register it by path/);
    assert.ok(r.body.error.message.includes(c.dir));
    assert.equal(existsSync(join(c.dir, 'pool', 'images')), false);
    assert.equal((await c.api('GET', '/api/v1/images/copy')).status, 404);
  });

  it('registers a file in the pool in place, and never deletes a file registered by path', async () => {
    const there = file(join(c.dir, 'pool', 'images', 'placed.raw'));
    const r = await c.api('POST', '/api/v1/images', { name: 'placed', format: 'raw', path: there });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.imported, false);
    assert.equal((await c.api('DELETE', '/api/v1/images/placed')).status, 204);
    assert.ok(existsSync(there), 'the file registered by path stays');
  });

  it('has a host delete the copy an earlier control made, with its image', async () => {
    const copy = file(join(c.dir, 'pool', 'images', 'old.raw'));
    const r = await c.api('POST', '/api/v1/images', { name: 'old', format: 'raw', path: copy });
    assert.equal(r.status, 201);
    // As an earlier version recorded its own copies.
    await c.control.db.updateTable('images').set({ imported: 1 }).where('id', '=', r.body.id).execute();
    assert.equal((await c.api('DELETE', '/api/v1/images/old')).status, 204);
    await until(() => !existsSync(copy), { what: 'the pool copy deleted by the host' });
    await until(async () => (await c.api('GET', '/api/v1/volumes')).body.items.length === 0, { what: 'its volume row gone' });
    assert.deepEqual(readdirSync(join(c.dir, 'pool', 'images')).sort(), ['placed.raw'], 'nothing else touched');
  });
});
