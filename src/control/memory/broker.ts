// The memory broker: a controller like the others. Each lease is a key: one pass takes one step of its
// grant, its return, its move to permanent or its donor's departure (the plan in its status says which).
// One more key checks every host for memory pressure on a period. Leases asked through the API and actions
// on pressure go through the same mechanisms and the same policy.
import { Gauge, Histogram } from 'prom-client';
import type { Logger } from '../../lib/logger.ts';
import { CommandError } from '../features/agents/connection.ts';
import { isFinal, leaseStates } from '../features/memory/model.ts';
import type { Metrics } from '../metrics.ts';
import type { ChangeFeed } from '../reconcile/changes.ts';
import type { Controller } from '../reconcile/manager.ts';
import type { ReconcileResult } from '../reconcile/queue.ts';
import type { LeaseRow, VmRow } from '../store/schema.ts';
import { type BrokerContext, type MemoryParts, AGAIN, StaleLease, StepFailed, pastDeadline } from './context.ts';
import { donorGone, donorHealth } from './donors.ts';
import { beginGrant, grantStep } from './grant.ts';
import { permanentStep } from './permanent.ts';
import { planOf } from './plan.ts';
import { createPressureRelief } from './pressure.ts';
import { beginReturn, returnStep } from './unwind.ts';
import { createVmTargets } from './vm-targets.ts';

export interface BrokerDeps extends MemoryParts {
  changes: ChangeFeed;
  metrics: Metrics;
  log: Logger;
  /** A migration as the API asks for one (no host: the scheduler's choice). */
  migrate(vmId: string, hostId: string | undefined): Promise<{ task: { id: string } }>;
  reboot(vmId: string): Promise<unknown>;
  resyncMs?: number;
}

/** The key of the periodic pressure check; lease ids never look like it. */
const PRESSURE_KEY = '~pressure';

export function createMemoryBroker(deps: BrokerDeps) {
  const { leases, log, policy } = deps;
  const targets = createVmTargets({ store: deps.vms, host: (id) => deps.registry.get(id), touched: (id) => deps.changes.publish({ kind: 'vm', id }) });
  const grantSeconds = new Histogram({
    name: 'awan_memory_lease_grant_seconds', help: 'From a lease asked for to the VM holding the memory, by mechanism', labelNames: ['mechanism'],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers: [deps.metrics.registry],
  });
  const ctx: BrokerContext = {
    leases, vms: deps.vms, tasks: deps.tasks, events: deps.events, registry: deps.registry, capacity: deps.capacity, log, policy, targets, grantSeconds,
    migrate: async (vmId, hostId) => ({ taskId: (await deps.migrate(vmId, hostId)).task.id }),
    restart: async (vmId) => void (await deps.reboot(vmId)),
  };
  const pressure = createPressureRelief({ registry: deps.registry, vms: deps.vms, leases, events: deps.events, targets, policy, log, migrate: (vmId) => deps.migrate(vmId, undefined) });

  new Gauge({
    name: 'awan_memory_leases', help: 'Memory leases by state', labelNames: ['state'], registers: [deps.metrics.registry],
    async collect() {
      this.reset();
      for (const s of leaseStates) this.set({ state: s }, 0);
      for (const r of await leases.countByState()) this.set({ state: r.state }, Number(r.n));
    },
  });
  deps.metrics.gauge('awan_memory_lent_mib', 'RAM hosts serve to other hosts\' VMs (remote memory)', [], (g) => g.set(deps.registry.all().reduce((n, h) => n + (h.memoryLentMiB ?? 0), 0)));
  deps.metrics.gauge('awan_memory_borrowed_mib', 'Remote memory plugged into VMs', [], (g) => {
    let n = 0;
    for (const h of deps.registry.all()) for (const v of h.vms.values()) n += v.swapTotalMiB ?? 0;
    g.set(n);
  });

  async function step(l: LeaseRow, vm: VmRow | undefined): Promise<ReconcileResult> {
    switch (l.state) {
      case 'requested':
        return l.return_requested ? beginReturn(ctx, l, 'given back before it was granted') : beginGrant(ctx, l, vm);
      case 'returning':
        return returnStep(ctx, l);
      case 'granting':
        if (!vm) return beginReturn(ctx, l, 'the VM was deleted', { code: 'VM_DELETED', message: 'the VM was deleted while it was given memory' });
        if (l.return_requested) return beginReturn(ctx, l, 'given back while it was granted');
        if (pastDeadline(l)) return beginReturn(ctx, l, 'the grant took too long', { code: 'GRANT_TIMEOUT', message: `step ${planOf(l).step} did not finish within ${policy.stepTimeoutMs / 1000} s` });
        return grantStep(ctx, l, vm);
      case 'active': {
        if (!vm) return beginReturn(ctx, l, 'the VM was deleted');
        if (l.return_requested) return beginReturn(ctx, l, 'given back');
        const health = donorHealth(ctx, l);
        if (health !== 'fine') return donorGone(ctx, l, vm, health);
        if (l.permanent_requested) return permanentStep(ctx, l, vm);
        if (l.kind !== 'temporary' || !l.expires_at) return;
        const leftMs = Date.parse(l.expires_at) - Date.now();
        if (leftMs <= 0) return beginReturn(ctx, l, `it expired after ${l.ttl_s} s`);
        return { requeueAfterMs: leftMs + 5 };
      }
      default:
        return;
    }
  }

  async function reconcile(key: string): Promise<ReconcileResult> {
    if (key === PRESSURE_KEY) {
      await pressure.check();
      return { requeueAfterMs: policy.pressureCheckMs };
    }
    const l = await leases.get(key);
    if (!l || isFinal(l.state)) return;
    const vm = await deps.vms.get(l.vm_id);
    try {
      return await step(l, vm);
    } catch (err) {
      if (err instanceof StaleLease) return AGAIN;
      // A grant step the world refused: undo what was done, and the lease fails with the reason.
      if (l.state === 'granting' && (err instanceof StepFailed || err instanceof CommandError)) {
        log.warn({ leaseId: l.id, err }, 'memory lease grant failed');
        return beginReturn(ctx, l, `the grant failed: ${err.message}`, { code: err.code, message: err.message });
      }
      throw err;
    }
  }

  const controller: Controller = {
    name: 'memory-broker',
    // A VM's report moves its grant on; a host's state (maintenance, failure) concerns the loans through it.
    watches: ['memory-lease', 'vm', 'host'],
    keysFor: async (change) => {
      if (change.kind === 'vm') return (await leases.openFor(change.id)).map((l) => l.id);
      if (change.kind === 'host') return (await leases.openThrough(change.id)).map((l) => l.id);
      return [change.id];
    },
    reconcile,
    concurrency: 16,
    resyncMs: deps.resyncMs,
    listKeys: async () => [PRESSURE_KEY, ...(await leases.open()).map((l) => l.id)],
  };
  return { controller, ballooned: pressure.ballooned };
}
