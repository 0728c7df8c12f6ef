// The long-running commands: awan serve (Cloud Control), awan agent (Node Control) and awan demo (both).
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import type { Control } from '../control/app.ts';
import type { ProbeGuest } from '../drivers/qemu/accel-probe.ts';
import type { HypervisorDriver, MigrationMode } from '../drivers/types.ts';
import type { Logger } from '../lib/logger.ts';

// The server, agent and drivers load on first use: the client commands share this binary and should not
// pay for Fastify, Kysely and the drivers on every `awan vm list`. --json asks for JSON log lines even on a
// terminal, where they would otherwise be pretty.
const createLogger = async (name: string, o: { level?: string; json?: boolean } = {}) =>
  (await import('../lib/logger.ts')).createLogger(name, o.level, o.json ? { format: 'json' } : {});

export type MakeLogger = typeof createLogger;

const jsonOption = (c: Command) => c.option('--json', 'log JSON lines even on a terminal, and print what a script needs (URL, password) as one JSON line');

const intOption = (v: string) => {
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${v} is not a number`);
  return n;
};

/** Collects a repeatable option's values. */
const collect = (v: string, previous: string[]) => [...previous, v];

async function startControl(opts: { db: string; port: number; host: string; advertiseUrl?: string; leaseMs?: number; leaseRenewMs?: number; leaseRetryMs?: number; hostLeaseMs?: number; failoverMarginMs?: number; haHostFailures?: number; hostFlapFailures?: number; hostFlapWindowMs?: number; hostQuarantineQuietMs?: number; haRestartBackoffMs?: number; haRestartBackoffMaxMs?: number; heartbeatMs?: number; poolDir?: string; imageDirs?: string[]; overcommit?: number; policy?: 'spread' | 'pack'; defaultImage?: string; adminPassword?: string; logLevel?: string; json?: boolean }) {
  const log = await createLogger('control', { level: opts.logLevel, json: opts.json });
  const { createControl } = await import('../control/app.ts');
  const control = await createControl({
    db: opts.db,
    adminPassword: opts.adminPassword ?? process.env.AWAN_ADMIN_PASSWORD,
    heartbeatIntervalMs: opts.heartbeatMs,
    poolDir: opts.poolDir,
    imageDirs: opts.imageDirs,
    memoryOvercommit: opts.overcommit,
    policy: opts.policy,
    defaultImage: opts.defaultImage,
    advertiseUrl: opts.advertiseUrl,
    leader: { leaseMs: opts.leaseMs, renewMs: opts.leaseRenewMs, retryMs: opts.leaseRetryMs },
    hostLeaseMs: opts.hostLeaseMs,
    failoverMarginMs: opts.failoverMarginMs,
    haHostFailures: opts.haHostFailures,
    hostFlapFailures: opts.hostFlapFailures,
    hostFlapWindowMs: opts.hostFlapWindowMs,
    hostQuarantineQuietMs: opts.hostQuarantineQuietMs,
    haRestartBackoffMs: opts.haRestartBackoffMs,
    haRestartBackoffMaxMs: opts.haRestartBackoffMaxMs,
    log,
  });
  const { generatedAdminPassword } = await control.start();
  await control.app.listen({ port: opts.port, host: opts.host });
  // The port actually bound: `--port 0` asks the system for a free one.
  const bound = control.app.server.address();
  const port = typeof bound === 'object' && bound ? bound.port : opts.port;
  return { control, generatedAdminPassword, url: `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}` };
}

function onSignal(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = () => {
    if (stopping) process.exit(1);
    stopping = true;
    stop().then(() => process.exit(0), (err: unknown) => {
      console.error(err);
      process.exit(1);
    });
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function registerRuntimeCommands(program: Command): void {
  jsonOption(program
    .command('serve'))
    .description('run Cloud Control: the REST API, the reconcilers and the agents\' endpoint')
    .addOption(new Option('--port <port>', 'port to listen on').env('AWAN_PORT').default(8080).argParser(intOption))
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .addOption(new Option('--db <url>', 'sqlite:PATH or postgres://…').env('AWAN_DB').default('sqlite:./data/awan.db'))
    .addOption(new Option('--advertise-url <url>', 'the URL agents and other replicas reach this one at (default: http://HOST:PORT)').env('AWAN_ADVERTISE_URL'))
    .addOption(new Option('--lease-ms <ms>', 'leader lease (PostgreSQL replicas): another replica leads this long after the leader dies').env('AWAN_LEASE_MS').default(5000).argParser(intOption))
    .addOption(new Option('--lease-renew-ms <ms>', 'how often the leader renews its lease').env('AWAN_LEASE_RENEW_MS').default(1000).argParser(intOption))
    .addOption(new Option('--lease-retry-ms <ms>', 'how often a replica that does not lead tries to').env('AWAN_LEASE_RETRY_MS').default(1000).argParser(intOption))
    .option('--pool-dir <dir>', 'shared pool directory for VM disks', './data/pool')
    .option('--image-dir <dir>', 'a directory images may be registered from (repeatable; default: the pool directory)', collect, [])
    .option('--memory-overcommit <ratio>', 'memory the scheduler may promise per MiB of host RAM', parseFloat, 1.0)
    .option('--heartbeat-ms <ms>', 'agent heartbeat interval; a host is unreachable after 2.5 missed beats', intOption, 1000)
    .addOption(new Option('--host-lease-ms <ms>', 'how long a heartbeat keeps a host\'s lease; past it the host is failed and stops its HA VMs').env('AWAN_HOST_LEASE_MS').default(5000).argParser(intOption))
    .addOption(new Option('--failover-margin-ms <ms>', 'waited beyond a failed host\'s lease before its HA VMs restart elsewhere').env('AWAN_FAILOVER_MARGIN_MS').default(1500).argParser(intOption))
    .addOption(new Option('--ha-host-failures <n>', 'host failures the HA VMs must survive: a new HA VM that would break it is refused (0: no check)').env('AWAN_HA_HOST_FAILURES').default(1).argParser(intOption))
    .addOption(new Option('--host-flap-failures <n>', 'a host declared failed this often within the flap window is quarantined when it comes back (0: never)').env('AWAN_HOST_FLAP_FAILURES').default(3).argParser(intOption))
    .addOption(new Option('--host-flap-window-ms <ms>', 'the window host failures are counted in').env('AWAN_HOST_FLAP_WINDOW_MS').default(600_000).argParser(intOption))
    .addOption(new Option('--host-quarantine-quiet-ms <ms>', 'a quarantined host is taken back after this long up without failing (0: only `awan host activate`)').env('AWAN_HOST_QUARANTINE_QUIET_MS').default(1_800_000).argParser(intOption))
    .addOption(new Option('--ha-restart-backoff-ms <ms>', 'wait before an HA VM\'s second restart; each later one within the hour waits twice as long (0: no wait)').env('AWAN_HA_RESTART_BACKOFF_MS').default(10_000).argParser(intOption))
    .addOption(new Option('--ha-restart-backoff-max-ms <ms>', 'the longest wait between restarts of one HA VM').env('AWAN_HA_RESTART_BACKOFF_MAX_MS').default(300_000).argParser(intOption))
    .option('--default-image <name>', 'image of VMs created without one')
    .addOption(new Option('--placement <policy>', 'spread VMs over hosts, or pack them to leave hosts empty').choices(['spread', 'pack']).default('spread'))
    .action(async (o: { port: number; host: string; db: string; advertiseUrl?: string; leaseMs: number; leaseRenewMs: number; leaseRetryMs: number; hostLeaseMs: number; failoverMarginMs: number; haHostFailures: number; hostFlapFailures: number; hostFlapWindowMs: number; hostQuarantineQuietMs: number; haRestartBackoffMs: number; haRestartBackoffMaxMs: number; poolDir: string; imageDir: string[]; memoryOvercommit: number; heartbeatMs: number; placement: 'spread' | 'pack'; defaultImage?: string; json?: boolean }) => {
      const imageDirs = o.imageDir.map((d) => resolve(d));
      if (o.advertiseUrl !== undefined && !/^https?:\/\/[^/]+/.test(o.advertiseUrl)) throw new Error(`--advertise-url ${o.advertiseUrl} is not an http(s) URL`);
      // Listening on every address says nothing about which one agents reach: name the port's host.
      const advertiseUrl = o.advertiseUrl ?? (o.port !== 0 && !['0.0.0.0', '::'].includes(o.host) ? `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${o.port}` : undefined);
      const { control, generatedAdminPassword, url } = await startControl({ ...o, advertiseUrl, poolDir: resolve(o.poolDir), imageDirs, overcommit: o.memoryOvercommit, policy: o.placement });
      if (o.json) console.log(JSON.stringify({ url, ...(generatedAdminPassword ? { username: 'admin', generatedAdminPassword } : {}) }));
      else {
        if (generatedAdminPassword) console.log(`first start: user admin, password ${generatedAdminPassword} (shown once)`);
        console.log(`awan control serving on ${url}`);
      }
      onSignal(() => control.close());
    });

  jsonOption(program
    .command('agent'))
    .description('run Node Control on this server: joins control and runs VMs through a driver')
    .requiredOption('--control <url>', 'Cloud Control URL')
    .option('--join-token <token>', 'single-use join token (first start only)')
    .addOption(new Option('--driver <kind>', 'hypervisor driver').choices(['qemu', 'sim']).default('qemu'))
    .option('--data-dir <dir>', 'where the agent keeps its credential and VM files', './data/agent')
    .option('--name <name>', 'host name', hostname())
    .option('--address <address>', 'address other hosts reach this one at (migration)', '127.0.0.1')
    .option('--sim-memory-mib <mib>', 'simulated server memory (sim driver)', intOption, 16384)
    .option('--sim-cpus <n>', 'simulated server CPUs (sim driver)', intOption, 8)
    .addOption(
      new Option('--migration <mode>', 'how VMs migrate away: live, paused for the copy, or auto (live under KVM, paused under TCG)')
        .choices(['auto', 'live', 'paused'])
        .env('AWAN_MIGRATION')
        .default('auto'),
    )
    .action(async (o: { control: string; joinToken?: string; driver: 'qemu' | 'sim'; dataDir: string; name: string; address: string; simMemoryMib: number; simCpus: number; migration: MigrationMode; json?: boolean }) => {
      const log = await createLogger(`agent:${o.name}`, { json: o.json });
      const { Agent } = await import('../agent/agent.ts');
      const dataDir = resolve(o.dataDir);
      mkdirSync(dataDir, { recursive: true });
      // The QEMU driver probes KVM with the test guest of AWAN_GUEST_DIR (or this checkout's cache) when there is
      // one; without it the agent runs under TCG for now, caches nothing and says so in its log.
      const driver = await makeDriver(o.driver, { name: o.name, address: o.address, dataDir, memoryMiB: o.simMemoryMib, cpus: o.simCpus, migrationMode: o.migration, log });
      const agent = new Agent({ control: o.control, joinToken: o.joinToken, driver, dataDir, name: o.name, log });
      await agent.start();
      log.info({ hostId: agent.hostId, driver: o.driver }, 'agent running');
      onSignal(async () => {
        await agent.stop();
        await driver.close();
      });
    });

  jsonOption(program
    .command('demo'))
    .description('control plus N servers on this machine, SQLite in a data directory, sample images')
    .option('--hosts <n>', 'number of servers', intOption, 3)
    .addOption(new Option('--driver <kind>', 'hypervisor driver').choices(['sim', 'qemu']).default('sim'))
    .addOption(new Option('--port <port>', 'port to listen on').env('AWAN_PORT').default(8080).argParser(intOption))
    .option('--data-dir <dir>', 'where the demo keeps its state', './data/demo')
    .option('--image-dir <dir>', 'another directory images may be registered from (repeatable)', collect, [])
    .action(async (o: { hosts: number; driver: 'sim' | 'qemu'; port: number; dataDir: string; imageDir: string[]; json?: boolean }) => {
      const { runDemo } = await import('./demo.ts');
      await runDemo({ ...o, json: Boolean(o.json), dataDir: resolve(o.dataDir), imageDirs: o.imageDir.map((d) => resolve(d)), startControl, makeDriver, makeLogger: createLogger, onSignal });
    });
}

export async function makeDriver(
  kind: 'sim' | 'qemu',
  o: { name: string; address: string; dataDir: string; memoryMiB?: number; cpus?: number; migrationMode?: MigrationMode; log?: Logger; probeGuest?: ProbeGuest },
): Promise<HypervisorDriver> {
  const { createDriver } = await import('../drivers/index.ts');
  if (kind === 'sim') return createDriver('sim', { hostname: o.name, address: o.address, memoryMiB: o.memoryMiB, cpus: o.cpus });
  const logger = o.log;
  const { localPoolPath } = await import('../agent/storage/index.ts');
  const { localPool, moveLocalDisks } = await import('../drivers/qemu/local-disks.ts');
  const moved = moveLocalDisks(localPool(join(o.dataDir, 'qemu')), localPoolPath(o.dataDir));
  if (moved.length > 0) logger?.warn({ moved }, 'moved local disks into the host\'s pool');
  return createDriver('qemu', {
    dataDir: join(o.dataDir, 'qemu'),
    localPoolDir: localPoolPath(o.dataDir),
    hostname: o.name,
    address: o.address,
    migrationMode: o.migrationMode,
    probeGuest: o.probeGuest,
    log: logger ? (msg: string, fields: Record<string, unknown> = {}, level: 'info' | 'warn' = 'warn') => logger[level](fields, msg) : undefined,
  });
}

export type StartControl = typeof startControl;
export type { Control };
