// VM disks with real QEMU: a qcow2 overlay on the image in the shared pool, grown while the VM is stopped,
// removed with the VM; the image itself is untouched. Control only records: the hosts' pools do the work.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createQemuDriver } from '../../src/drivers/qemu/index.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { killMentioning } from '../support/processes.ts';
import { requireCommand } from '../support/system.ts';
import { until } from '../until.ts';

const info = (path: string) => JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', path], { encoding: 'utf8' })) as { 'virtual-size': number; format: string; 'backing-filename'?: string };

describe('QEMU disks', { timeout: 300_000 }, () => {
  let c: Cluster<HypervisorDriver>;
  before(async () => {
    requireCommand('qemu-system-x86_64', 'apt-get install qemu-system-x86 qemu-utils');
    requireCommand('qemu-img', 'apt-get install qemu-utils');
    c = await startCluster<HypervisorDriver>({
      hosts: 2,
      makeDriver: (name, dataDir) => createQemuDriver({ dataDir, hostname: name, address: '127.0.0.1', accel: 'tcg' }),
    });
  });
  after(async () => {
    if (!c) return;
    const dir = c.dir;
    await c.close();
    killMentioning(dir);
  });

  it('runs a VM on an overlay of its image, grows the overlay while stopped, and deletes it with the VM', async () => {
    const image = join(c.dir, 'template.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1G']);
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'template', format: 'qcow2', path: image })).status, 201);
    const r = await c.api('POST', '/api/v1/vms', { name: 'disky', cpus: 1, memoryMiB: 128, image: 'template' });
    assert.equal((await c.waitTask(r.body.task.id, 120_000)).state, 'succeeded');
    const disk = join(c.dir, 'pool', 'vms', r.body.vm.id, 'disk0.qcow2');
    assert.equal(info(disk)['backing-filename'], image);
    assert.equal(info(disk)['virtual-size'], 1024 ** 3);

    const refused = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 2 });
    assert.equal(refused.status, 409, 'a running VM keeps its disk size');
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/disky/stop', { force: true })).body.task.id, 60_000)).state, 'succeeded');
    const grown = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 2 });
    assert.equal(grown.status, 200, JSON.stringify(grown.body));
    assert.equal(grown.body.diskGiB, 2);
    await until(() => info(disk)['virtual-size'] === 2 * 1024 ** 3, { what: 'a host grew the disk', timeoutMs: 30_000 });
    const [volume] = (await c.api('GET', `/api/v1/volumes?vm=${r.body.vm.id}`)).body.items;
    await until(async () => (await c.api('GET', `/api/v1/volumes/${volume.id}`)).body.state === 'ready', { what: 'the volume ready' });
    const shrink = await c.api('POST', '/api/v1/vms/disky/resize', { diskGiB: 1 });
    assert.equal(shrink.status, 400);
    assert.match(shrink.body.error.message, /lose data/);

    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/disky')).body.task.id, 60_000)).state, 'succeeded');
    await until(() => !existsSync(disk), { what: 'a host deleted the disk', timeoutMs: 30_000 });
    await until(async () => (await c.api('GET', `/api/v1/volumes/${volume.id}`)).status === 404, { what: 'the volume row gone' });
    assert.equal(info(image)['virtual-size'], 1024 ** 3, 'the template is untouched');
  });

  it('carries a host-local disk along a live migration, and keeps a stopped local VM on its host', async () => {
    const image = join(c.dir, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '256M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', image]);
    assert.equal((await c.api('POST', '/api/v1/images', { name: 'base', format: 'qcow2', path: image })).status, 201);
    const [a, b] = c.hosts;
    await c.api('PATCH', `/api/v1/hosts/${a.name}`, { labels: { slot: 'a' } });
    const created = await c.api('POST', '/api/v1/vms', { name: 'local-1', cpus: 1, memoryMiB: 128, image: 'base', diskGiB: 1, storage: 'local', placementLabels: { slot: 'a' }, start: false });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const id = created.body.vm.id;
    assert.equal(created.body.vm.storage, 'local');
    // The VM's own data: written into its overlay on host A before it first runs (the driver keeps an
    // existing disk), so the test can tell what the mirror carried.
    const diskOn = (h: typeof a) => join(h.dataDir, 'local-pool', 'vms', id, 'disk0.qcow2');
    mkdirSync(dirname(diskOn(a)), { recursive: true });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', image, diskOn(a), '1G']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 8M 2M', diskOn(a)]);
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/local-1/start')).body.task.id, 120_000)).state, 'succeeded');
    assert.equal((await c.api('GET', '/api/v1/vms/local-1')).body.hostId, a.agent.hostId);

    // A stale disk of this VM on B (an earlier visit that ended badly) must not leak into the new copy.
    mkdirSync(dirname(diskOn(b)), { recursive: true });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', image, diskOn(b), '1G']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 20M 1M', diskOn(b)]);
    const m = await c.api('POST', '/api/v1/vms/local-1/migrate', { host: b.name });
    const task = await c.waitTask(m.body.task.id, 120_000);
    assert.equal(task.state, 'succeeded', JSON.stringify(task));
    assert.equal((await c.api('GET', '/api/v1/vms/local-1')).body.hostId, b.agent.hostId);
    assert.equal(existsSync(diskOn(a)), false, 'the source host let go of the disk');
    const read = (pattern: string, offset: string, length: string) =>
      execFileSync('qemu-io', ['-U', '-r', '-f', 'qcow2', '-c', `read -P ${pattern} ${offset} ${length}`, diskOn(b)], { encoding: 'utf8' });
    assert.doesNotMatch(read('0x22', '8M', '2M'), /verification failed/, 'the VM\'s own data arrived');
    assert.doesNotMatch(read('0x11', '0', '1M'), /verification failed/, 'the shared image still shows through');
    assert.doesNotMatch(read('0', '20M', '1M'), /verification failed/, 'nothing stale from an earlier visit');
    assert.equal(info(diskOn(b))['backing-filename'], image, 'only the top layer was copied');

    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/local-1/stop', { force: true })).body.task.id, 60_000)).state, 'succeeded');
    const stopped = (await c.api('GET', '/api/v1/vms/local-1')).body;
    assert.equal(stopped.hostId, b.agent.hostId, 'a stopped local VM stays with its disk');
    assert.equal(existsSync(diskOn(b)), true);
    const grown = await c.api('POST', '/api/v1/vms/local-1/resize', { diskGiB: 2 });
    assert.equal(grown.status, 200, JSON.stringify(grown.body));
    await until(() => info(diskOn(b))['virtual-size'] === 2 * 1024 ** 3, { what: 'its host grew the local disk', timeoutMs: 30_000 });
    const [local] = (await c.api('GET', `/api/v1/volumes?vm=${id}`)).body.items;
    assert.equal(local.poolId, (await c.api('GET', `/api/v1/pools/${b.name}-local`)).body.id, 'the volume followed its VM to B');
    assert.equal((await c.waitTask((await c.api('POST', '/api/v1/vms/local-1/start')).body.task.id, 120_000)).state, 'succeeded');
    assert.equal((await c.api('GET', '/api/v1/vms/local-1')).body.hostId, b.agent.hostId);
    assert.equal((await c.waitTask((await c.api('DELETE', '/api/v1/vms/local-1')).body.task.id, 60_000)).state, 'succeeded');
    await until(() => !existsSync(diskOn(b)), { what: 'the disk goes with the VM' });
    await until(async () => (await c.api('GET', `/api/v1/volumes/${local.id}`)).status === 404, { what: 'its volume row gone' });
  });
});
