// Moving a running VM's memory through the API: the balloon goes down and back up, and a target below what
// the guest uses is refused by the host with the reason.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createSimDriver } from '../../src/drivers/sim/index.ts';
import type { HypervisorDriver } from '../../src/drivers/types.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { until } from '../until.ts';

describe('VM memory', () => {
  let c: Cluster;
  before(async () => {
    // The balloon takes its time, as a guest's does: half a second for 512 MiB.
    c = await startCluster({ hosts: 1, sim: { balloonMiBPerS: 1024 }, control: { heartbeatIntervalMs: 1000 } });
    const r = await c.api('POST', '/api/v1/vms', { name: 'mem-1', cpus: 1, memoryMiB: 1024, maxMemoryMiB: 2048 });
    await c.waitTask(r.body.task.id);
  });
  after(async () => { await c?.close(); });

  it('shrinks and grows the memory the guest has', async () => {
    for (const target of [512, 1536]) {
      const r = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: target });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const task = await c.waitTask(r.body.task.id);
      assert.equal(task.state, 'succeeded', JSON.stringify(task));
      await until(async () => (await c.api('GET', '/api/v1/vms/mem-1')).body.memoryActualMiB === target, { what: `memoryActualMiB ${target}` });
      const vm = (await c.api('GET', '/api/v1/vms/mem-1')).body;
      assert.equal((await c.hosts[0].driver.status(vm.id)).memoryActualMiB, target);
    }
  });

  it('ends the task once the guest holds the new size, and says the new size', async () => {
    const vm = (await c.api('GET', '/api/v1/vms/mem-1')).body;
    for (const target of [768, 1280, 1024]) {
      const r = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: target });
      const task = await c.waitTask(r.body.task.id);
      assert.equal(task.state, 'succeeded', JSON.stringify(task));
      assert.equal(task.message, `memory is ${target} MiB`);
      assert.equal(task.result.memoryActualMiB, target);
      assert.equal((await c.hosts[0].driver.status(vm.id)).memoryActualMiB, target, 'the guest has it when the task says so');
    }
  });

  it('refuses a target below what the guest uses, and one above its maximum', async () => {
    const low = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: 16 });
    const task = await c.waitTask(low.body.task.id);
    assert.equal(task.state, 'failed');
    assert.equal(task.error.code, 'INSUFFICIENT_MEMORY');
    const high = await c.api('POST', '/api/v1/vms/mem-1/memory', { targetMiB: 4096 });
    assert.equal(high.status, 400);
    assert.match(high.body.error.message, /maxMemoryMiB/);
  });
});

describe('VM memory on a host that answers before the guest has the new size', () => {
  let c: Cluster<HypervisorDriver>;
  before(async () => {
    // A host that sends the request and reports the size the guest has at that moment, as a balloon
    // request does before the guest gives anything back.
    c = await startCluster<HypervisorDriver>({
      hosts: 1,
      control: { heartbeatIntervalMs: 1000 },
      makeDriver: async (name) => {
        const sim = createSimDriver({ hostname: name, address: name, cpus: 8, memoryMiB: 16384, bootDelayMs: 20 });
        return Object.assign(Object.create(sim) as HypervisorDriver, {
          setMemory: async (vmId: string) => sim.status(vmId),
        });
      },
    });
    const r = await c.api('POST', '/api/v1/vms', { name: 'lazy-1', cpus: 1, memoryMiB: 256, maxMemoryMiB: 1024 });
    await c.waitTask(r.body.task.id);
  });
  after(async () => { await c?.close(); });

  it('fails the task with the size the guest holds, instead of reporting success', async () => {
    const r = await c.api('POST', '/api/v1/vms/lazy-1/memory', { targetMiB: 512 });
    const task = await c.waitTask(r.body.task.id);
    assert.equal(task.state, 'failed', JSON.stringify(task));
    assert.equal(task.error.code, 'MEMORY_NOT_REACHED');
    assert.match(task.error.message, /holds 256 MiB, not the 512 MiB asked/);
  });
});
