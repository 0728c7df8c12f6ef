// api.vm_creates: POST /api/v1/vms over real HTTP against control on SQLite in a file or on PostgreSQL
// (AWAN_TEST_PG, a throwaway schema), with sim hosts connected in a helper process; reports creates/s, how
// long until every VM runs, and a baseline of creates that start nothing (the API path without the
// reconciler's work). Each figure names its database in `db`.
import { join } from 'node:path';
import { freshPostgres } from '../test/support/postgres.ts';
import { Helper } from './support/child.ts';
import { type BenchControl, startBenchControl } from './support/control.ts';
import { quantile, report } from './support/report.ts';
import { waitFor } from './support/wait.ts';

const HOSTS = 4;
const REQUESTS = 2000;
const BASELINE_REQUESTS = 1000;
const CONCURRENCY = 16;
const VM_MEMORY_MIB = 256;

export type BenchDb = 'sqlite' | 'postgres';
/** The `db` parameter of the figures: SQLite is in a file, as `awan serve` keeps it. */
const dbLabel = (db: BenchDb) => (db === 'sqlite' ? 'sqlite-file' : 'postgres');

async function startHosts(bc: BenchControl, fleet: Helper): Promise<void> {
  const tokens = await Promise.all(Array.from({ length: HOSTS }, async () => (await bc.control.hosts.createJoinToken(bc.adminId)).token));
  // Plenty of room: every host could hold all the VMs on its own.
  await fleet.request({
    type: 'start', control: bc.url, tokens, namePrefix: 'api-host', dataDir: join(bc.dir, 'agents'),
    cpus: 1024, memoryMiB: REQUESTS * VM_MEMORY_MIB * 2, bootDelayMs: 20, joinConcurrency: HOSTS, timeoutMs: 30_000,
  }, 'ready', 40_000);
  await waitFor(() => bc.readyHosts() === HOSTS, `${HOSTS} ready hosts`, 10_000);
}

/** One burst of creates from the load helper; reports it and returns how many were accepted. */
async function burst(bc: BenchControl, load: Helper, requests: number, start: boolean, db: BenchDb): Promise<number> {
  const cpu0 = process.cpuUsage();
  const done = await load.request({
    type: 'start', url: bc.url, token: bc.token, total: requests, concurrency: CONCURRENCY, memoryMiB: VM_MEMORY_MIB,
    namePrefix: start ? 'bench-vm' : 'bench-stopped-vm', start, timeoutMs: 60_000,
  }, 'done', 90_000);
  const statuses = done.statuses as Record<string, number>;
  const latenciesMs = done.latenciesMs as number[];
  const accepted = statuses['202'] ?? 0;
  const cpu = process.cpuUsage(cpu0);
  report('api.vm_creates', accepted / ((done.elapsedMs as number) / 1000), '1/s', {
    requests, concurrency: CONCURRENCY, hosts: HOSTS, db: dbLabel(db), start, accepted, statuses,
    p50Ms: Math.round(quantile(latenciesMs, 0.5) * 10) / 10, p99Ms: Math.round(quantile(latenciesMs, 0.99) * 10) / 10,
    // Control's own CPU per accepted create within the burst: steadier than the rate on a busy machine.
    controlCpuMsPerCreate: Math.round(((cpu.user + cpu.system) / 1000 / Math.max(1, accepted)) * 100) / 100,
  });
  return accepted;
}

export async function apiVmCreates(engine: BenchDb = 'sqlite'): Promise<void> {
  let bc: BenchControl | undefined;
  const helpers: Helper[] = [];
  // On PostgreSQL: AWAN_TEST_PG (or the local default); if it does not answer, the error names the install command.
  const pg = engine === 'postgres' ? await freshPostgres() : undefined;
  try {
    bc = await startBenchControl('api', { heartbeatIntervalMs: 1000, ...(pg ? { db: pg.url } : {}) });
    const { db } = bc.control;
    const fleet = new Helper('fleet.ts', 'agent fleet');
    helpers.push(fleet);
    await startHosts(bc, fleet);
    const load = new Helper('vm-load.ts', 'HTTP load');
    helpers.push(load);

    const started = performance.now();
    const cpu0 = process.cpuUsage();
    const accepted = await burst(bc, load, REQUESTS, true, engine);
    let running = 0;
    const countRunning = async () => Number((await db.selectFrom('vms').select(db.fn.countAll<number>().as('n')).where('phase', '=', 'running').executeTakeFirstOrThrow()).n);
    await waitFor(async () => (running = await countRunning()) >= accepted, `${accepted} running VMs`, 120_000, 100).catch((err: Error) => {
      console.error(`api.vm_creates: ${err.message} (${running} running)`);
    });
    const cpu = process.cpuUsage(cpu0);
    const reconcileErrors = (await bc.control.metrics.reconcileErrors.get()).values.reduce((n, v) => n + v.value, 0);
    report('api.vm_creates.all_running', (performance.now() - started) / 1000, 's', {
      vms: accepted, running, hosts: HOSTS, db: dbLabel(engine), from: 'first request', reconcileErrors,
      controlCpuMsPerVm: Math.round(((cpu.user + cpu.system) / 1000 / Math.max(1, accepted)) * 100) / 100,
    });

    await burst(bc, load, BASELINE_REQUESTS, false, engine);
  } finally {
    for (const h of helpers.reverse()) await h.close();
    await bc?.close();
    await pg?.drop();
  }
}
