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
});
