// Input is taken as sent: bodies are not coerced, labels are strings under real keys, filters name their
// allowed values, and a wrong method on a known path says which methods it has.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Cluster, startCluster } from '../support/cluster.ts';

interface ErrorBody {
  error: { code: string; message: string; details?: { field?: string; allowed?: unknown[] } };
}

describe('strict input', () => {
  let c: Cluster;
  // Beats of 1 s: on a loaded machine 200 ms beats make hosts look unreachable under the VMs made here.
  before(async () => { c = await startCluster({ hosts: 2, control: { heartbeatIntervalMs: 1000 } }); });
  after(async () => { await c?.close(); });

  const vmCount = async () => (await c.api('GET', '/api/v1/vms')).body.items.length;

  function expectValidation(r: { status: number; body: ErrorBody }, field: string, message: RegExp) {
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    assert.match(r.body.error.message, message);
    assert.equal(r.body.error.details?.field, field);
  }

  describe('bodies are taken as sent, not coerced', () => {
    it('a boolean for cpus is refused', async () => {
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'coerced', cpus: true, memoryMiB: 256 }), 'body.cpus', /^body\.cpus must be integer/);
      assert.equal(await vmCount(), 0);
    });

    it('a string for memoryMiB is refused', async () => {
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'coerced', cpus: 1, memoryMiB: '256' }), 'body.memoryMiB', /^body\.memoryMiB must be integer/);
      assert.equal(await vmCount(), 0);
    });

    it('a string for ha is refused', async () => {
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'coerced', cpus: 1, memoryMiB: 256, ha: 'true' }), 'body.ha', /^body\.ha must be boolean/);
      assert.equal(await vmCount(), 0);
    });

    it('a number for a name and a one-element array for a number are refused', async () => {
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 42, cpus: 1, memoryMiB: 256 }), 'body.name', /^body\.name must be string/);
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'arr', cpus: [1], memoryMiB: 256 }), 'body.cpus', /^body\.cpus must be integer/);
      assert.equal(await vmCount(), 0);
    });

    it('an agent joining with facts of the wrong type is refused', async () => {
      const { body } = await c.api('POST', '/api/v1/hosts/join-tokens');
      const facts = { hostname: 'x', cpus: '4', memoryMiB: 1024, memoryFreeMiB: 1024, driver: 'sim', address: 'x', capabilities: [] };
      expectValidation(await c.api('POST', '/api/v1/agent/join', { joinToken: body.token, name: 'typed', facts }, ''), 'body.facts.cpus', /^body\.facts\.cpus must be integer/);
      assert.equal((await c.api('GET', '/api/v1/hosts')).body.items.some((h: { name: string }) => h.name === 'typed'), false);
    });

    it('a wrong field in a body that may also be left out is named, with what it must be', async () => {
      expectValidation(await c.api('POST', '/api/v1/vms/nope/stop', { force: 'yes' }), 'body.force', /^body\.force must be boolean \(got 'yes'\)$/);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { zone: 5 }), 'body.zone', /^body\.zone must be string or null \(got 5\)$/);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { zone: '' }), 'body.zone', /^body\.zone must not be empty/);
      expectValidation(await c.api('POST', '/api/v1/vms', { cpus: 1, memoryMiB: 256 }), 'body.name', /^body\.name is required$/);
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'x', cpus: 1, memoryMiB: 256, storage: 'nfs' }), 'body.storage', /^body\.storage must be one of shared, local, replicated \(got 'nfs'\)$/);
    });

    it('query strings still take numbers written as text', async () => {
      const r = await c.api('GET', '/api/v1/vms?limit=5');
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.items, []);
      assert.equal((await c.api('GET', '/api/v1/events?limit=2')).body.items.length, 2);
    });

    it('defaults still apply to bodies', async () => {
      const r = await c.api('POST', '/api/v1/vms', { name: 'defaulted', cpus: 1, memoryMiB: 256 });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.vm.powerState, 'running', 'start defaults to true');
      const idle = await c.api('POST', '/api/v1/vms', { name: 'idle', cpus: 1, memoryMiB: 256, start: false });
      assert.equal(idle.body.vm.powerState, 'stopped');
    });
  });

  describe('labels', () => {
    it('a VM placement label with an empty key is refused', async () => {
      const before = await vmCount();
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'lbl', cpus: 1, memoryMiB: 256, placementLabels: { '': 'ssd' } }), 'body.placementLabels', /^body\.placementLabels has an empty key/);
      assert.equal(await vmCount(), before);
    });

    it('a VM placement label whose value is not a string is refused', async () => {
      const before = await vmCount();
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'lbl', cpus: 1, memoryMiB: 256, placementLabels: { disk: 5 } }), 'body.placementLabels.disk', /^body\.placementLabels\.disk must be string/);
      expectValidation(await c.api('POST', '/api/v1/vms', { name: 'lbl', cpus: 1, memoryMiB: 256, placementLabels: { disk: { kind: 'ssd' } } }), 'body.placementLabels.disk', /must be string/);
      assert.equal(await vmCount(), before);
    });

    it('host labels with an empty key, a bad key or a value that is not a string are refused and change nothing', async () => {
      assert.equal((await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { disk: 'ssd' } })).status, 200);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { '': 'x' } }), 'body.labels', /^body\.labels has an empty key/);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { 'a key': 'x' } }), 'body.labels', /^body\.labels has a key 'a key' that/);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { disk: 5 } }), 'body.labels.disk', /^body\.labels\.disk must be string/);
      expectValidation(await c.api('PATCH', '/api/v1/hosts/host-1', { labels: { disk: true } }), 'body.labels.disk', /must be string/);
      assert.deepEqual((await c.api('GET', '/api/v1/hosts/host-1')).body.labels, { disk: 'ssd' });
    });
  });

  describe('filters name their allowed values', () => {
    it('an unknown host state is a 400 listing the states', async () => {
      const r = await c.api('GET', '/api/v1/hosts?state=bogus');
      expectValidation(r, 'querystring.state', /^querystring\.state must be one of joining, ready, maintenance, unreachable, failed, quarantined, fenced \(got 'bogus'\)$/);
      assert.deepEqual(r.body.error.details?.allowed, ['joining', 'ready', 'maintenance', 'unreachable', 'failed', 'quarantined', 'fenced']);
      const ready = await c.api('GET', '/api/v1/hosts?state=ready');
      assert.equal(ready.status, 200);
      assert.deepEqual(ready.body.items.map((h: { name: string }) => h.name).sort(), ['host-1', 'host-2']);
    });

    it('an unknown VM phase is a 400 listing the phases', async () => {
      const r = await c.api('GET', '/api/v1/vms?phase=bogus');
      expectValidation(r, 'querystring.phase', /^querystring\.phase must be one of pending, scheduling, .*, running, .*, failed, .* \(got 'bogus'\)$/);
      assert.ok(r.body.error.details?.allowed?.includes('running'));
      const stopped = await c.api('GET', '/api/v1/vms?phase=stopped');
      assert.equal(stopped.status, 200);
      assert.deepEqual(stopped.body.items.map((v: { name: string }) => v.name), ['idle']);
    });

    it('an unknown task state or kind is a 400 listing the allowed values', async () => {
      const state = await c.api('GET', '/api/v1/tasks?state=done');
      expectValidation(state, 'querystring.state', /^querystring\.state must be one of queued, running, succeeded, failed, cancelled \(got 'done'\)$/);
      const kind = await c.api('GET', '/api/v1/tasks?kind=bogus');
      expectValidation(kind, 'querystring.kind', /^querystring\.kind must be one of .*create.*migrate.* \(got 'bogus'\)$/);
      const created = await c.api('GET', '/api/v1/tasks?kind=create&state=succeeded');
      assert.equal(created.status, 200);
      assert.ok(created.body.items.length >= 1);
    });
  });

  describe('a wrong method on a known path', () => {
    it('is 405 with Allow listing the methods of that path', async () => {
      const cases: [string, string, string][] = [
        ['PUT', '/api/v1/vms', 'GET, HEAD, POST'],
        ['PATCH', '/api/v1/vms/defaulted', 'DELETE, GET, HEAD'],
        ['GET', '/api/v1/vms/defaulted/start', 'POST'],
        ['DELETE', '/api/v1/hosts/host-1', 'GET, HEAD, PATCH'],
      ];
      for (const [method, path, allow] of cases) {
        const res = await fetch(c.url + path, { method, headers: { authorization: `Bearer ${c.token}` } });
        const body = (await res.json()) as ErrorBody;
        assert.equal(res.status, 405, `${method} ${path}: ${JSON.stringify(body)}`);
        assert.equal(res.headers.get('allow'), allow, `${method} ${path}`);
        assert.equal(body.error.code, 'METHOD_NOT_ALLOWED');
        assert.equal(body.error.message, `${path} does not take ${method}; it takes ${allow}`);
        assert.deepEqual(body.error.details, { method, path, allowed: allow.split(', ') });
      }
    });

    it('an unknown path is still 404', async () => {
      const res = await fetch(`${c.url}/api/v1/nothing-here`, { method: 'PUT', headers: { authorization: `Bearer ${c.token}` } });
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as ErrorBody).error.code, 'ROUTE_NOT_FOUND');
    });
  });
});
