// Helpers for memory lease tests: borrow, wait for a lease's state, read what the VM holds.
import { until } from '../until.ts';
import type { Cluster, TestHost } from './cluster.ts';

export async function borrow(c: Cluster<any>, body: Record<string, unknown>) {
  const r = await c.api('POST', '/api/v1/memory/leases', body);
  if (r.status !== 202) throw new Error(`borrow answered ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body as { lease: { id: string }; task: { id: string } };
}

export const lease = async (c: Cluster<any>, id: string) => (await c.api('GET', `/api/v1/memory/leases/${id}`)).body;

export const leaseIn = (c: Cluster<any>, id: string, state: string, timeoutMs = 15_000) =>
  until(async () => {
    const l = await lease(c, id);
    return l.state === state ? l : undefined;
  }, { timeoutMs, what: `lease ${id} ${state}` });

export const vm = async (c: Cluster<any>, name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body;

export const holds = (c: Cluster<any>, name: string, mib: number, timeoutMs = 10_000) =>
  until(async () => (await vm(c, name)).memoryActualMiB === mib, { timeoutMs, what: `${name} holds ${mib} MiB` });

export async function createVm(c: Cluster<any>, body: Record<string, unknown>) {
  const r = await c.api('POST', '/api/v1/vms', body);
  if (r.status !== 202) throw new Error(`create answered ${r.status}: ${JSON.stringify(r.body)}`);
  const t = await c.waitTask(r.body.task.id);
  if (t.state !== 'succeeded') throw new Error(`create failed: ${JSON.stringify(t)}`);
  return vm(c, String(body.name));
}

/** RAM a simulated host lends now (its memory exports). */
export const lentBy = async (c: Cluster<any>, host: TestHost<any>) => (await c.memory.lender(host.dataDir)?.lentMiB()) ?? 0;
