// The replica parts of the protocol: commands that serve, attach and drop replicas, a disk's replica
// target, and the replica states an agent reports.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseAgentMessage, parseControlMessage } from './messages.ts';

const cmd = (command: Record<string, unknown>) => parseControlMessage(JSON.stringify({ type: 'command', id: 'c1', epoch: 1, command }));
const pool = { type: 'local', path: '/var/lib/awan/local-pool' };
const target = { host: '10.0.0.2', port: 40123, exportName: 'vms-v1-disk0.qcow2' };

describe('replica protocol', () => {
  it('accepts the replica commands', () => {
    for (const c of [
      { op: 'replicaExport', pool, name: 'vms/v1/disk0.qcow2', format: 'qcow2', sizeMiB: 1024 },
      { op: 'replicaExport', pool, name: 'vms/v1/disk0.qcow2', format: 'raw', sizeMiB: 1024, address: '10.0.0.2' },
      { op: 'replicaUnexport', pool, name: 'vms/v1/disk0.qcow2', delete: true },
      { op: 'replicaAttach', vmId: 'v1', disk: 0, target },
      { op: 'replicaDetach', vmId: 'v1', disk: 0 },
    ]) assert.equal(cmd(c).ok, true, JSON.stringify(c));
  });

  it('refuses malformed targets, sizes and disks', () => {
    for (const c of [
      { op: 'replicaExport', pool, name: '../escape.qcow2', format: 'qcow2', sizeMiB: 1024 },
      { op: 'replicaExport', pool, name: 'a.qcow2', format: 'qcow2', sizeMiB: 0 },
      { op: 'replicaAttach', vmId: 'v1', disk: 16, target },
      { op: 'replicaAttach', vmId: 'v1', disk: 0, target: { ...target, port: 0 } },
      { op: 'replicaAttach', vmId: 'v1', disk: 0, target: { ...target, exportName: 'a,b' } },
      { op: 'replicaAttach', vmId: 'v1', disk: 0, target: { ...target, tls: true } },
    ]) assert.equal(cmd(c).ok, false, JSON.stringify(c));
  });

  it('carries a replica target in a disk of the VM spec', () => {
    const spec = {
      id: 'v1', name: 'v1', cpus: 1, memoryMiB: 256, maxMemoryMiB: 256, boot: { kind: 'disk' }, nics: [],
      disks: [{ path: 'vms/v1/disk0.qcow2', local: true, format: 'qcow2', sizeMiB: 1024, replica: target }],
    };
    assert.equal(cmd({ op: 'start', spec }).ok, true);
    assert.equal(cmd({ op: 'start', spec: { ...spec, disks: [{ ...spec.disks[0], replica: { host: 'h' } }] } }).ok, false);
  });

  it('takes the replica states of a VM report', () => {
    const vm = { id: 'v1', name: 'v1', state: 'running', cpus: 1, memoryMiB: 256, memoryActualMiB: 256 };
    const report = (replicas: unknown[]) => parseAgentMessage(JSON.stringify({ type: 'vms', full: false, vms: [{ ...vm, replicas }] }));
    assert.equal(report([
      { disk: 0, target, state: 'rebuilding', copiedBytes: 1024, totalBytes: 4096 },
      { disk: 1, target, state: 'synced' },
      { disk: 2, target, state: 'degraded', reason: 'Input/output error' },
    ]).ok, true);
    assert.equal(report([{ disk: 0, target, state: 'mirroring' }]).ok, false);
  });
});
