// Cloud Control assembled from its parts: store, services, reconcilers and the HTTP API. No module-level
// state: every instance is independent (tests run several in one process).
import { join, resolve } from 'node:path';
import { type Logger, createLogger } from '../lib/logger.ts';
import type { VmSpecMsg } from '../protocol/messages.ts';
import { agentGateway } from './features/agents/gateway.ts';
import { passwordRoutes } from './features/auth/password-routes.ts';
import { authRoutes } from './features/auth/routes.ts';
import type { LoginLimits } from './features/auth/login-limit.ts';
import type { ScryptCost } from './features/auth/passwords.ts';
import { createAuthService } from './features/auth/service.ts';
import { eventRoutes } from './features/events/routes.ts';
import { createEventService } from './features/events/service.ts';
import { HostRegistry } from './features/hosts/registry.ts';
import { publicState } from './features/hosts/model.ts';
import { hostRoutes } from './features/hosts/routes.ts';
import { createHostService } from './features/hosts/service.ts';
import { createHostStore } from './features/hosts/store.ts';
import { imageRoutes } from './features/images/routes.ts';
import { createImageDirs } from './features/images/image-dirs.ts';
import { createImageInspector } from './features/images/inspect.ts';
import type { QemuImgOptions } from './features/images/qemu-img.ts';
import { type ImageInspector, createImageService } from './features/images/service.ts';
import { taskRoutes } from './features/tasks/routes.ts';
import { createTaskService } from './features/tasks/service.ts';
import { consoleRoute } from './features/vms/console.ts';
import { createConsoleTickets } from './features/vms/console-tickets.ts';
import { vmRoutes } from './features/vms/routes.ts';
import { createVmService } from './features/vms/service.ts';
import { createVmStore } from './features/vms/store.ts';
import { memoryRoutes } from './features/memory/routes.ts';
import { createMemoryService } from './features/memory/service.ts';
import { createLeaseStore as createMemoryLeaseStore } from './features/memory/store.ts';
import { createMemoryBroker } from './memory/broker.ts';
import { type MemoryPolicy, checkMemoryPolicy } from './memory/policy.ts';
import { poolRoutes } from './features/pools/routes.ts';
import { createPoolService } from './features/pools/service.ts';
import { volumeRoutes } from './features/volumes/routes.ts';
import { createVolumes } from './features/volumes/service.ts';
import { createVolumeController } from './reconcile/volume-controller.ts';
import { createHttpServer } from './http/server.ts';
import { createReplicaDirectory } from './leader/directory.ts';
import { type LeaderConfig, LEADER_DEFAULTS, createLeadership } from './leader/elector.ts';
import { createLeaseStore } from './leader/lease.ts';
import { replicaRoutes } from './leader/routes.ts';
import { createMetrics } from './metrics.ts';
import { createLocalChangeFeed, createSharedChangeFeed } from './reconcile/changes.ts';
import { createDrainController } from './reconcile/drain.ts';
import { checkFlapPolicy, defaultFlapPolicy } from './ha/flap-quarantine.ts';
import { createHaManager } from './ha/ha-manager.ts';
import { createReplicaFailover } from './storage/failover.ts';
import { createReplicator } from './storage/replicator.ts';
import { checkRestartBackoff, defaultRestartBackoff } from './ha/restart-backoff.ts';
import { createControllerManager } from './reconcile/manager.ts';
import { createVmController } from './reconcile/vm-controller.ts';
import { resumeTasks } from './reconcile/resume.ts';
import { CapacityIndex, type PlacementPolicy } from './scheduler/capacity-index.ts';
import { MIGRATION_TABLE, openStore } from './store/db.ts';
import { connected, createPgNotifyBus } from './store/pg-notify.ts';
import type { VmRow } from './store/schema.ts';

export interface ControlConfig {
  /** sqlite:PATH, sqlite::memory: or postgres://… */
  db: string;
  adminPassword?: string;
  heartbeatIntervalMs?: number;
  memoryOvercommit?: number;
  policy?: PlacementPolicy;
  /** The default shared pool: a path every host sees, where VM disks are made. Control never writes to it. */
  poolDir?: string;
  /**
   * The only directories image files (disks, their backing files, kernels, initrds) may come from, compared
   * by real path. The pool directory when none is given.
   */
  imageDirs?: string[];
  /** How images are checked with qemu-img (binary, timeout, limits). */
  qemuImg?: QemuImgOptions;
  resyncIntervalMs?: number;
  log?: Logger;
  inspectImage?: ImageInspector;
  /** Image for VMs created without one. */
  defaultImage?: string;
  auth?: {
    /** scrypt work factors for password hashes (default OWASP's N=2^17, r=8, p=1). */
    scryptCost?: ScryptCost;
    /** Failed logins allowed per window (default 10 per address and user, 50 per address, a minute). */
    loginLimits?: Partial<LoginLimits>;
  };
  /**
   * Whether start() makes this process lead at once (the default: one process alone). With replicas the
   * leader lease calls lead() and follow() instead.
   */
  autoLead?: boolean;
  /** The leader epoch this process writes host status with (0 alone). */
  epoch?: () => number;
  /** The leader's base URL, for a follower that relays a console to it. */
  leaderUrl?: () => Promise<string | undefined>;
  /** How often the leader writes changed host status (heartbeat, connection, free memory) to SQL. */
  hostStatusFlushMs?: number;
  /**
   * The URL other replicas and agents reach this replica at; by default the address it listens on.
   * On PostgreSQL several replicas share the database and the leader lease decides which one leads.
   */
  advertiseUrl?: string;
  /** The leader lease's timings (PostgreSQL; on SQLite the one process leads). */
  leader?: LeaderConfig;
  /** How long a heartbeat keeps a host's lease; past it the host is failed and stops its HA VMs (default 5 s). */
  hostLeaseMs?: number;
  /** How long after a failed host's lease ran out its HA VMs are restarted elsewhere (default 1.5 s). */
  failoverMarginMs?: number;
  /** HA admission control: host failures the HA VMs must survive (default 1; 0 turns the check off). */
  haHostFailures?: number;
  /** A host declared failed this often within `hostFlapWindowMs` is quarantined when it comes back (default 3; 0: never). */
  hostFlapFailures?: number;
  /** The window failures are counted in (default 10 minutes). */
  hostFlapWindowMs?: number;
  /** A quarantine lifts itself after this long up without a failure (default 30 minutes; 0: only an admin lifts it). */
  hostQuarantineQuietMs?: number;
  /** The wait before an HA VM's second restart; each later restart within the hour waits twice as long (default 10 s). */
  haRestartBackoffMs?: number;
  /** The longest wait between restarts of one HA VM (default 5 minutes). */
  haRestartBackoffMaxMs?: number;
  /** The memory broker's policy: pressure thresholds, guest floors, donor reserve, rate limit (see memory/policy.ts). */
  memoryPolicy?: Partial<MemoryPolicy>;
}

export type Control = Awaited<ReturnType<typeof createControl>>;

export async function createControl(config: ControlConfig) {
  const log = config.log ?? createLogger('control');
  const heartbeatIntervalMs = config.heartbeatIntervalMs ?? 1000;
  // Settings are checked before anything is opened.
  const flaps = checkFlapPolicy({
    failures: config.hostFlapFailures ?? defaultFlapPolicy.failures,
    windowMs: config.hostFlapWindowMs ?? defaultFlapPolicy.windowMs,
    quietMs: config.hostQuarantineQuietMs ?? defaultFlapPolicy.quietMs,
  });
  const backoff = checkRestartBackoff({
    baseMs: config.haRestartBackoffMs ?? defaultRestartBackoff.baseMs,
    maxMs: config.haRestartBackoffMaxMs ?? Math.max(defaultRestartBackoff.maxMs, config.haRestartBackoffMs ?? 0),
  });
  const memoryPolicy = checkMemoryPolicy(config.memoryPolicy);
  const store = await openStore(config.db);
  const { db } = store;
  const metrics = createMetrics();
  // Replicas on PostgreSQL hear each other's changes and events; SQLite is one process.
  const bus = store.dialect === 'postgres' ? createPgNotifyBus({ url: config.db, log }) : undefined;
  const events = createEventService({ db, bus, log });
  const changes = bus ? createSharedChangeFeed(bus) : createLocalChangeFeed();
  const hostStore = createHostStore(db);
  const tasks = createTaskService({ db, events });
  const auth = createAuthService({ db, scryptCost: config.auth?.scryptCost });
  const capacity = new CapacityIndex({ memoryOvercommit: config.memoryOvercommit ?? 1.0 });
  let app: Awaited<ReturnType<typeof createHttpServer>> | undefined;
  /** Where this replica answers: the advertised URL, else the loopback address of the port it listens on. */
  const selfUrl = (): string | undefined => {
    if (config.advertiseUrl) return config.advertiseUrl.replace(/\/+$/, '');
    const bound = app?.server.listening ? app.server.address() : null;
    if (!bound || typeof bound === 'string') return undefined;
    const host = bound.address === '0.0.0.0' || bound.address === '::' ? '127.0.0.1' : bound.address;
    return `http://${host.includes(':') ? `[${host}]` : host}:${bound.port}`;
  };
  const leadership = createLeadership({ store: createLeaseStore(db, store.dialect), single: store.dialect === 'sqlite', url: selfUrl, log, config: config.leader });
  const replicas = createReplicaDirectory(leadership, log, selfUrl);
  /** The epoch of this leadership: the lease's, unless the caller drives leadership itself (autoLead: false). */
  const epoch = config.epoch ?? (() => leadership.epoch);
  const registry = new HostRegistry({ store: hostStore, events, capacity, changes, log, heartbeatIntervalMs, epoch, statusFlushMs: config.hostStatusFlushMs, leaseMs: config.hostLeaseMs, flaps });
  // Connected agents hear of replicas that come and go, so they know where to go when this one dies.
  replicas.onChange((view) => {
    if (!registry.leading) return;
    for (const h of registry.all()) h.connection?.send({ type: 'replicas', ...view });
  });
  const poolDir = resolve(config.poolDir ?? join(process.cwd(), 'data', 'pool'));
  const pools = createPoolService({ db, events, registry });
  const volumes = createVolumes({ db, pools, changes });
  const imageDirs = createImageDirs((config.imageDirs?.length ? config.imageDirs : [poolDir]).map((d) => resolve(d)));
  const images = createImageService({
    db, events,
    inspect: config.inspectImage ?? createImageInspector({ imageDirs, qemuImg: config.qemuImg }),
    // The image is gone from the catalogue either way; a host deletes the copy in the pool.
    discard: (path) => volumes.discardFile(path).catch((err: unknown) => log.warn({ err, path }, 'could not have an imported image file deleted')),
  });

  async function buildSpec(vm: VmRow): Promise<VmSpecMsg> {
    const image = vm.image_id ? await images.find(vm.image_id) : undefined;
    const boot: VmSpecMsg['boot'] =
      image?.format === 'kernel'
        ? {
            kind: 'kernel',
            kernelPath: image.kernel_path!,
            initrdPath: image.initrd_path!,
            ...(image.cmdline ? { cmdline: image.cmdline } : {}),
            ...(image.ready_text ? { readyText: image.ready_text } : {}),
          }
        : image
          ? { kind: 'disk' }
          : { kind: 'none' };
    const disks = await volumes.diskSpecs(vm, image);
    return {
      id: vm.id,
      name: vm.name,
      cpus: vm.cpus,
      memoryMiB: vm.memory_mib,
      maxMemoryMiB: vm.max_memory_mib,
      boot,
      disks,
      nics: JSON.parse(vm.nics) as VmSpecMsg['nics'],
      ha: vm.ha === 1,
      token: vm.placement_token,
    };
  }

  const manager = createControllerManager({ log, metrics, changes });
  const vmStore = createVmStore(db);
  const replicator = createReplicator({ db, registry, pools, events, changes, log, resyncMs: config.resyncIntervalMs });
  const replicaFailover = createReplicaFailover({ db, registry, pools, events, changes, leftovers: replicator.leftovers });
  const controller = createVmController({
    db, store: vmStore, tasks, events, registry, capacity, changes, log, buildSpec,
    removeVolumes: (vmId) => volumes.removeFor(vmId),
    replicas: replicaFailover,
    policy: config.policy,
    resyncMs: config.resyncIntervalMs,
  });
  const vmController = manager.register(controller.controller);
  const volumeController = createVolumeController({ db, registry, pools, log, resyncMs: config.resyncIntervalMs });
  volumeController.attach(manager.register(volumeController.controller));
  registry.onPools((hostId, reports) => pools.report(hostId, reports));
  // A local disk moved with its VM: its volume row follows.
  events.subscribe((e) => {
    // A host-local disk first made at boot on a host chosen in the same pass is recorded once the VM runs there.
    if (e.type === 'vm.running') {
      db.selectFrom('vms').selectAll().where('id', '=', e.objectId).executeTakeFirst()
        .then(async (vm) => (vm?.local_disk && vm.host_id && vm.image_id ? volumes.diskSpecs(vm, await images.find(vm.image_id)) : undefined))
        .catch((err: unknown) => log.warn({ err, vmId: e.objectId }, 'could not record the volume of a VM'));
      return;
    }
    if (e.type !== 'vm.migrated') return;
    db.selectFrom('volumes').select('id').where('vm_id', '=', e.objectId).execute()
      .then((rows) => rows.forEach((r) => changes.publish({ kind: 'volume', id: r.id })))
      .catch((err: unknown) => log.warn({ err, vmId: e.objectId }, 'could not look up the volumes of a VM'));
  });
  const vms = createVmService({ db, store: vmStore, tasks, events, images, capacity, registry, changes, volumes, defaultImage: config.defaultImage,
    haAdmission: { failures: config.haHostFailures ?? 1, memoryOvercommit: config.memoryOvercommit ?? 1.0 },
  });
  const hosts = createHostService({ db, store: hostStore, registry, capacity, events, tasks, changes });
  manager.register(createDrainController({
    store: hostStore, registry, tasks, log,
    vmsOn: async (hostId) => {
      const all = [];
      let cursor: string | undefined;
      do {
        const p = await vms.list({ limit: 500, hostId, cursor });
        all.push(...p.items);
        cursor = p.nextCursor ?? undefined;
      } while (cursor);
      return all;
    },
    migrate: (id, by) => vms.migrate(id, undefined, by),
    stop: (id, by) => vms.stop(id, false, by),
  }));
  replicator.attach(manager.register(replicator.controller));
  manager.register(createHaManager({
    registry, store: vmStore, changes, capacity, events, metrics, log, policy: config.policy, marginMs: config.failoverMarginMs, replicas: replicaFailover, backoff,
  }));
  const leaseStore = createMemoryLeaseStore(db);
  const memory = createMemoryService({ db, leases: leaseStore, vms: vmStore, tasks, events, registry, capacity, changes, policy: memoryPolicy });
  const broker = createMemoryBroker({
    leases: leaseStore, vms: vmStore, tasks, events, registry, capacity, changes, metrics, log, policy: memoryPolicy, resyncMs: config.resyncIntervalMs,
    migrate: (id, hostId) => vms.migrate(id, hostId, null),
    reboot: (id) => vms.reboot(id, null),
  });
  manager.register(broker.controller);
  // A task that ends is a change of that task: controllers waiting on it (a drain) hear it on every
  // replica, each from the event it sees, so the note itself stays local.
  events.subscribe((e) => {
    if (e.objectKind === 'task' && e.seq > 0 && e.type !== 'task.progress') changes.publish({ kind: 'task', id: e.objectId }, { local: true });
  });

  registry.onVmsReported((_hostId, vmIds) => vmIds.forEach((id) => changes.publish({ kind: 'vm', id })));
  registry.onHostState((hostId) => {
    vmStore.onHost(hostId)
      .then((ids) => ids.forEach((id) => changes.publish({ kind: 'vm', id })))
      .catch((err: unknown) => log.error({ err, hostId }, 'could not look up the VMs of a host'));
  });

  metrics.gauge('awan_hosts', 'Hosts by state', ['state'], (g) => {
    g.reset();
    for (const h of registry.all()) g.inc({ state: publicState(h.row.state, h.row.maintenance === 1) });
  });
  metrics.gauge('awan_heartbeat_lag_seconds', 'Longest time since a connected host last beat', [], (g) => {
    const now = Date.now();
    let lag = 0;
    for (const h of registry.all()) if (h.connection && h.lastHeartbeatMs) lag = Math.max(lag, now - h.lastHeartbeatMs);
    g.set(lag / 1000);
  });
  const vmsByPhase = metrics.gauge('awan_vms', 'VMs by phase', ['phase'], () => undefined);
  events.subscribe((e) => {
    if (e.type !== 'vm.migrated' || !e.data) return;
    const { mode, totalMs, downtimeMs } = e.data as { mode: 'live' | 'paused'; totalMs?: unknown; downtimeMs?: unknown };
    if (typeof totalMs === 'number') metrics.migrationDuration.observe({ mode }, totalMs / 1000);
    if (typeof downtimeMs === 'number') metrics.migrationDowntime.observe({ mode }, downtimeMs / 1000);
  });

  app = await createHttpServer({ log, auth, metrics });
  app.get('/healthz', { config: { role: 'public' }, schema: { hide: true } }, () => ({ status: 'ok' }));
  app.get('/readyz', { config: { role: 'public' }, schema: { hide: true } }, async (_req, reply) => {
    try {
      await db.selectFrom(MIGRATION_TABLE as never).select('name' as never).limit(1).execute();
      return { status: 'ready' };
    } catch {
      return reply.code(503).send({ error: { code: 'UNAVAILABLE', message: 'the database does not answer' } });
    }
  });
  app.get('/metrics', { config: { role: 'public' }, schema: { hide: true } }, async (_req, reply) => {
    vmsByPhase.reset();
    const rows = await vmStore.countByPhase();
    for (const r of rows) vmsByPhase.set({ phase: r.phase }, Number(r.n));
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  authRoutes(app, auth, { loginLimits: config.auth?.loginLimits });
  passwordRoutes(app, auth);
  hostRoutes(app, hosts);
  vmRoutes(app, vms);
  consoleRoute(app, { vms, registry, events, tickets: createConsoleTickets(), relay: { leading: () => registry.leading, leaderUrl: config.leaderUrl ?? (async () => (registry.leading ? undefined : (await leadership.leader())?.url || undefined)) } });
  imageRoutes(app, images);
  poolRoutes(app, pools);
  volumeRoutes(app, volumes, pools);
  memoryRoutes(app, memory);
  taskRoutes(app, tasks, (id) => vms.cancelMigration(id));
  eventRoutes(app, events);
  let accepting = false;
  let closing = false;
  agentGateway(app, {
    hosts, registry, log, metrics, heartbeatIntervalMs, db, leadership, epoch, replicas, sharedPools: pools.sharedRefs,
    accepting: () => accepting && registry.leading,
    retryMs: Math.max(100, Math.floor((config.leader?.retryMs ?? LEADER_DEFAULTS.retryMs) / 2)),
    leaseMs: registry.leaseMs,
    extendLease: (hostId, ttlMs) => hostStore.extendLease(hostId, new Date(Date.now() + ttlMs).toISOString()),
  });
  replicaRoutes(app, { leadership, replicas });
  metrics.gauge('awan_leader_epoch', 'The leader epoch this replica leads at; 0 while another replica leads', [], (g) => g.set(registry.leading ? epoch() : 0));

  if (bus) await connected(bus);

  /** VMs placed in the capacity index from SQL; a replica that leads again forgets those gone meanwhile. */
  const seeded = new Set<string>();
  /**
   * This process leads: it holds agent connections, writes host status and runs the controllers. With the
   * lease (held: its epoch), leadership can end while this runs: it stops there and undoes what started.
   */
  async function lead(held?: number): Promise<void> {
    const still = () => held === undefined || (leadership.isLeader && leadership.epoch === held);
    await registry.lead();
    const placed = await vmStore.placed();
    const now = new Set(placed.map((vm) => vm.id));
    for (const id of seeded) if (!now.has(id)) capacity.release(id);
    seeded.clear();
    for (const vm of placed) {
      capacity.assign(vm.id, vm.host_id!, { memoryMiB: vm.memory_mib, cpus: vm.cpus, antiAffinity: vm.anti_affinity });
      seeded.add(vm.id);
    }
    if (!still()) return;
    // From here agents may connect: the host table they attach to is loaded and will not be replaced.
    accepting = true;
    await resumeTasks({ db, tasks, log, hosts: hostStore });
    if (!still()) return;
    await manager.start();
    if (!still()) {
      await manager.stop();
      return;
    }
    if (held !== undefined) log.info({ epoch: held, replicaId: leadership.replicaId }, 'controllers running');
    void replicas.refresh();
  }

  /** Another process leads: serve the API from SQL, run no controller; agent connections close at once. */
  async function follow(reason?: string): Promise<void> {
    accepting = false;
    const dropping = registry.follow();
    const stopping = manager.stop();
    if (reason && !closing) log.warn({ reason, replicaId: leadership.replicaId }, 'controllers stopped: this replica no longer leads');
    await Promise.all([dropping, stopping]);
    void replicas.refresh();
  }

  return {
    app, store, db, log, auth, memory, broker, leadership, replicas, events, tasks, images, vms, vmStore, pools, volumes, hosts, hostStore, registry, capacity, metrics, changes, manager, vmController,
    lead, follow,
    /** Loads state, resumes unfinished work and starts the control loops (when this process leads). */
    async start(): Promise<{ generatedAdminPassword?: string }> {
      const admin = await auth.ensureAdmin(config.adminPassword);
      await pools.ensureDefault(poolDir);
      // autoLead: false: the caller decides who leads (tests of replicas); else the leader lease does.
      if (config.autoLead === false) await follow();
      else await leadership.start({ onLead: (held) => lead(held), onLose: (reason) => follow(reason), onTick: () => void replicas.refresh() });
      return { generatedAdminPassword: admin.generatedPassword };
    },
    async close(): Promise<void> {
      closing = true;
      if (config.autoLead !== false) await leadership.stop();
      registry.stop();
      await manager.stop();
      await app.close();
      // Let passes already running finish their writes before the database goes away.
      await Promise.race([manager.idle(), new Promise((r) => setTimeout(r, 5000).unref())]);
      await registry.flushNow().catch(() => undefined);
      events.close();
      await bus?.close();
      await store.close();
    },
  };
}
