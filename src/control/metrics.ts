// Prometheus metrics of one control process, on a registry of its own (no global state).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'awan_' });
  // These three are gauges named like counters, which Prometheus tooling refuses (`promtool check
  // metrics`); each is only the sum of its by-type gauge (`sum(awan_nodejs_active_handles)`), kept.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
    registry.removeSingleMetric(`awan_${name}`);
  }
  return {
    registry,
    httpDuration: new Histogram({
      name: 'awan_http_request_duration_seconds',
      help: 'HTTP request latency',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    heartbeats: new Counter({ name: 'awan_heartbeats_total', help: 'Heartbeats received from agents', registers: [registry] }),
    migrationDowntime: new Histogram({
      name: 'awan_migration_downtime_seconds',
      help: 'How long a migrated VM could not run, by how its memory was copied (live, or paused for the copy)',
      labelNames: ['mode'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    migrationDuration: new Histogram({
      name: 'awan_migration_duration_seconds',
      help: 'How long copying a migrated VM took, by how its memory was copied',
      labelNames: ['mode'],
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    reconcileErrors: new Counter({ name: 'awan_reconcile_errors_total', help: 'Reconcile passes that failed', labelNames: ['controller'], registers: [registry] }),
    gauge: (name: string, help: string, labelNames: string[], collect: (g: Gauge) => void) =>
      new Gauge({ name, help, labelNames, registers: [registry], collect() { collect(this); } }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
