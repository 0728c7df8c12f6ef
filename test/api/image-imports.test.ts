// An imported image is control's own copy in the pool: it gets the pool's mode, whatever the source's, and
// goes away with its image; a file registered by path is never deleted.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

describe('imported images', () => {
  let c: Cluster;
  before(async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    c = await startCluster();
  });
  after(async () => { await c?.close(); });

  const source = (name: string, mode: number) => {
    const path = join(c.dir, name);
    writeFileSync(path, Buffer.alloc(1024 * 1024, 7));
    chmodSync(path, mode);
    return path;
  };
  const modeOf = (path: string) => statSync(path).mode & 0o7777;

  it('copies with the pool\'s mode 0644, not a 0777 or setuid source\'s', async () => {
    for (const [name, mode] of [['open', 0o777], ['setuid', 0o4755], ['private', 0o600]] as const) {
      const from = source(`${name}.raw`, mode);
      const r = await c.api('POST', '/api/v1/images', { name, format: 'raw', path: from, import: true });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.body.path, join(c.dir, 'pool', 'images', `${name}.raw`));
      assert.equal(modeOf(r.body.path).toString(8), '644', `${name}: the copy's mode`);
      assert.equal(r.body.imported, true);
      assert.deepEqual(readFileSync(r.body.path), readFileSync(from));
      assert.equal(modeOf(from), mode, 'the source is untouched');
    }
  });

  it('deletes the copy with its image, and never a file registered by path', async () => {
    const from = source('kept.raw', 0o644);
    const copy = await c.api('POST', '/api/v1/images', { name: 'copied', format: 'raw', path: from, import: true });
    const byPath = await c.api('POST', '/api/v1/images', { name: 'in-place', format: 'raw', path: from });
    assert.equal(copy.status, 201, JSON.stringify(copy.body));
    assert.equal(byPath.status, 201, JSON.stringify(byPath.body));
    assert.ok(existsSync(copy.body.path));

    assert.equal((await c.api('DELETE', '/api/v1/images/copied')).status, 204);
    assert.equal(existsSync(copy.body.path), false, 'the pool copy is gone');
    assert.equal((await c.api('DELETE', '/api/v1/images/in-place')).status, 204);
    assert.ok(existsSync(from), 'the file registered by path stays');
    assert.deepEqual([copy.body.imported, byPath.body.imported], [true, false]);
  });

  it('leaves a file already in the pool alone instead of overwriting it (409), and leaves no partial copy', async () => {
    const dir = join(c.dir, 'pool', 'images');
    mkdirSync(dir, { recursive: true });
    const there = join(dir, 'taken.raw');
    writeFileSync(there, Buffer.alloc(64 * 1024, 1));
    const mine = await c.api('POST', '/api/v1/images', { name: 'pool-file', format: 'raw', path: there });
    assert.equal(mine.status, 201, 'the pool is an image directory: its files may be registered in place');
    const r = await c.api('POST', '/api/v1/images', { name: 'taken', format: 'raw', path: source('other.raw', 0o644), import: true });
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'CONFLICT');
    assert.deepEqual(readFileSync(there), Buffer.alloc(64 * 1024, 1));
    assert.equal((await c.api('GET', '/api/v1/images/taken')).status, 404);
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('.')), [], 'no work files left behind');
  });
});
