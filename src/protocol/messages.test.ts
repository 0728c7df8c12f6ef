// Both ends parse each other's messages strictly: only well-formed, known messages get through.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseAgentMessage, parseControlMessage } from './messages.ts';

describe('protocol messages', () => {
  it('accepts a command control may send', () => {
    const r = parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', epoch: 3, command: { op: 'stop', vmId: 'v1', force: true } }));
    assert.equal(r.ok, true);
  });

  it('refuses a command without the leader epoch', () => {
    const r = parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', command: { op: 'stop', vmId: 'v1' } }));
    assert.equal(r.ok, false);
  });

  it('refuses unknown operations, extra fields, wrong types and non-JSON, saying why', () => {
    const cases = [
      ['{"type":"command","id":"c1","command":{"op":"format-disk","vmId":"v1"}}', /invalid command message/],
      ['{"type":"command","id":"c1","command":{"op":"stop","vmId":"v1","now":true}}', /invalid command/],
      ['{"type":"welcome","hostId":"h","heartbeatIntervalMs":"fast"}', /invalid welcome message/],
      ['{"type":"command","id":"c1","command":{"op":"start","spec":{"id":"v","name":"v","cpus":1,"memoryMiB":1,"maxMemoryMiB":1,"boot":{"kind":"none"},"disks":[],"nics":[{"mode":"user","mac":"not-a-mac"}]}}}', /invalid command/],
      ['{oops', /not JSON/],
    ] as const;
    for (const [raw, why] of cases) {
      const r = parseControlMessage(raw);
      assert.equal(r.ok, false, raw);
      assert.match(!r.ok ? r.error : '', why);
    }
  });

  it('refuses an agent report with a VM state it does not know', () => {
    const vm = { id: 'v', name: 'v', state: 'levitating', cpus: 1, memoryMiB: 1, memoryActualMiB: 1 };
    assert.equal(parseAgentMessage(JSON.stringify({ type: 'vms', full: true, vms: [vm] })).ok, false);
    assert.equal(parseAgentMessage(JSON.stringify({ type: 'vms', full: true, vms: [{ ...vm, state: 'running' }] })).ok, true);
  });

  it('checks volume commands: a pool by type and absolute path, a name that stays inside it', () => {
    const cmd = (command: Record<string, unknown>) => parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', epoch: 1, command }));
    const pool = { type: 'shared', path: '/srv/pool' };
    assert.equal(cmd({ op: 'volumeCreate', pool, name: 'vms/v/disk0.qcow2', format: 'qcow2', sizeMiB: 1024, backing: { path: '/srv/img.raw', format: 'raw' } }).ok, true);
    assert.equal(cmd({ op: 'volumeGrow', pool, name: 'vms/v/disk0.qcow2', sizeMiB: 2048 }).ok, true);
    assert.equal(cmd({ op: 'volumeDelete', pool: { type: 'local', path: '/data/local-pool' }, name: 'vms/v/disk0.qcow2' }).ok, true);
    assert.equal(cmd({ op: 'volumeExport', pool, name: 'vms/v/disk0.qcow2', address: '10.0.0.2' }).ok, true);
    assert.equal(cmd({ op: 'volumeUnexport', pool, name: 'vms/v/disk0.qcow2' }).ok, true);
    for (const bad of [
      { op: 'volumeDelete', pool, name: '../../etc/passwd' },
      { op: 'volumeDelete', pool, name: '/etc/passwd' },
      { op: 'volumeDelete', pool: { type: 'shared', path: 'relative' }, name: 'a' },
      { op: 'volumeDelete', pool: { type: 'nfs', path: '/x' }, name: 'a' },
      { op: 'volumeCreate', pool, name: 'a.qcow2', format: 'vmdk', sizeMiB: 1 },
      { op: 'volumeGrow', pool, name: 'a.qcow2', sizeMiB: 0 },
    ]) assert.equal(cmd(bad).ok, false, JSON.stringify(bad));
  });

  it('takes the pools an agent reports, and the shared pools in a welcome', () => {
    assert.equal(parseAgentMessage(JSON.stringify({ type: 'pools', pools: [{ type: 'local', path: '/d/local-pool', capacityMiB: 10, freeMiB: 5 }, { type: 'shared', path: '/p', error: 'not mounted' }] })).ok, true);
    assert.equal(parseAgentMessage(JSON.stringify({ type: 'pools', pools: [{ type: 'local', path: '/d', freeMiB: -1 }] })).ok, false);
    assert.equal(parseControlMessage(JSON.stringify({ type: 'welcome', hostId: 'h', heartbeatIntervalMs: 100, epoch: 1, replicas: [], pools: [{ type: 'shared', path: '/p' }] })).ok, true);
  });
});
