// Image checks fail closed: no qemu-img, a qemu-img that hangs or answers nonsense, all refuse the image; and
// qemu-img runs under address-space and CPU-time limits.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { requireCommand } from '../support/system.ts';

describe('image checks fail closed', () => {
  let missing: Cluster;
  let odd: Cluster;
  let toolDir: string;
  before(async () => {
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    requireCommand('prlimit', 'apt-get install util-linux');
    missing = await startCluster({ control: { qemuImg: { bin: '/nonexistent/qemu-img' } } });
    // A stand-in for qemu-img that misbehaves as the image's name asks, and is the real one otherwise.
    toolDir = mkdtempSync(join(tmpdir(), 'awan-tool-'));
    const tool = join(toolDir, 'qemu-img');
    writeFileSync(tool, `#!/bin/sh
for last; do :; done
case "$last" in
  *hangs*) exec sleep 600 ;;
  *nonsense*) echo 'this is not JSON'; exit 0 ;;
  *wrong-shape*) echo '{"format": "raw"}'; exit 0 ;;
  *limits*) echo "as=$(ulimit -v) cpu=$(ulimit -t)" >&2; exit 1 ;;
esac
exec qemu-img "$@"
`);
    chmodSync(tool, 0o755);
    odd = await startCluster({ control: { qemuImg: { bin: tool, timeoutMs: 500 } } });
  });
  after(async () => {
    await missing?.close();
    await odd?.close();
    if (toolDir) rmSync(toolDir, { recursive: true, force: true });
  });

  const raw = (c: Cluster, name: string) => {
    const path = join(c.dir, `${name}.raw`);
    writeFileSync(path, Buffer.alloc(64 * 1024));
    return path;
  };

  it('answers 503 UNAVAILABLE and registers nothing when qemu-img is missing', async () => {
    const r = await missing.api('POST', '/api/v1/images', { name: 'unchecked', format: 'raw', path: raw(missing, 'unchecked') });
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'UNAVAILABLE');
    assert.match(r.body.error.message, /qemu-img is missing .*apt-get install qemu-utils/);
    assert.deepEqual((await missing.api('GET', '/api/v1/images')).body.items, []);
  });

  it('still registers a kernel image without qemu-img: it has no disk format to read', async () => {
    const r = await missing.api('POST', '/api/v1/images', { name: 'kern', format: 'kernel', kernelPath: raw(missing, 'vmlinuz'), initrdPath: raw(missing, 'initrd') });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  });

  for (const [name, message] of [
    ['hangs', /qemu-img info was stopped after 500 ms/],
    ['nonsense', /qemu-img info did not answer in JSON/],
    ['wrong-shape', /qemu-img info answered without a format or size/],
  ] as const) {
    it(`refuses an image whose check ${name === 'hangs' ? 'does not finish' : `answers ${name}`} with 422 IMAGE_INVALID`, async () => {
      const r = await odd.api('POST', '/api/v1/images', { name, format: 'raw', path: raw(odd, name) });
      assert.equal(r.status, 422, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'IMAGE_INVALID');
      assert.match(r.body.error.message, message);
      assert.equal((await odd.api('GET', `/api/v1/images/${name}`)).status, 404);
    });
  }

  it('runs qemu-img with 1 GiB of address space and 30 s of CPU time', async () => {
    const r = await odd.api('POST', '/api/v1/images', { name: 'limits', format: 'raw', path: raw(odd, 'limits') });
    assert.equal(r.status, 422);
    assert.match(r.body.error.message, /as=1048576 cpu=30$/);
  });
});
