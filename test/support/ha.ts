// What HA tests look at: a VM, a host, the events of a type, and which simulated hosts hold a live copy.
import type { Cluster } from './cluster.ts';

export const upStates = ['starting', 'running', 'paused'];

export const vmOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/vms/${name}`)).body;
export const hostOf = async (c: Cluster, name: string) => (await c.api('GET', `/api/v1/hosts/${name}`)).body;

export interface EventSeen {
  seq: number;
  at: string;
  type: string;
  objectId: string;
  message: string;
  data?: Record<string, any>;
}

export async function eventsOf(c: Cluster, type: string, objectId?: string): Promise<EventSeen[]> {
  const items = (await c.api('GET', `/api/v1/events?type=${type}&limit=100`)).body.items as EventSeen[];
  return items.filter((e) => !objectId || e.objectId === objectId);
}

/** Every host's driver that holds a live copy of the VM. */
export async function runningOn(c: Cluster, vmId: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of c.hosts) if ((await h.driver.list()).some((v) => v.id === vmId && upStates.includes(v.state))) out.push(h.name);
  return out;
}

/** Samples the live copies of a VM every few ms until stopped; `most` is the largest count seen at once. */
export function watchCopies(c: Cluster, vmId: string): { stop(): Promise<number> } {
  let most = 0;
  let on = true;
  const loop = (async () => {
    while (on) {
      most = Math.max(most, (await runningOn(c, vmId)).length);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    async stop() {
      on = false;
      await loop;
      return most;
    },
  };
}
