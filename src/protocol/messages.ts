// Messages between Cloud Control and Node Control over the agent WebSocket: TypeBox schemas used by both
// ends, so a malformed or unknown message is refused where it arrives.
import { type Static, Type } from 'typebox';
import { Compile } from 'typebox/compile';

const Strict = { additionalProperties: false } as const;
const Id = Type.String({ minLength: 1, maxLength: 128 });
const MiB = Type.Integer({ minimum: 0 });

// ---- Synchronous volume replicas (replicated volumes): the replica's NBD address, its state per disk. ----
// The commands that serve, attach and drop replicas are in the replica block of CommandSchema below.

/** Where a replica host serves a disk's copy: what `replicaExport` answers and a disk's `replica` names. */
export const ReplicaTargetSchema = Type.Object(
  {
    host: Type.String({ minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9.:-]+$' }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    exportName: Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9._-]+$' }),
  },
  Strict,
);

/** `rebuilding` (copying, not yet in step), `synced` (every write reaches both), `degraded` (copy stopped). */
export const ReplicaStatusSchema = Type.Object(
  {
    disk: Type.Integer({ minimum: 0, maximum: 15 }),
    target: ReplicaTargetSchema,
    state: Type.Union([Type.Literal('rebuilding'), Type.Literal('synced'), Type.Literal('degraded')]),
    copiedBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    totalBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    reason: Type.Optional(Type.String({ maxLength: 2048 })),
  },
  Strict,
);
// ---- end of the replica schemas ----

// ---- Remote memory (a donor's RAM as a borrower VM's swap): the commands are in CommandSchema below. ----

/** Where a donor serves lent memory: what `memoryExport` answers and `remoteMemoryAttach` names. */
export const RemoteMemoryTargetSchema = ReplicaTargetSchema;
const RemoteMemorySlot = Type.Integer({ minimum: 0, maximum: 7 });

export const RemoteMemoryStatusSchema = Type.Object(
  {
    slot: RemoteMemorySlot,
    target: RemoteMemoryTargetSchema,
    sizeMiB: Type.Integer({ minimum: 1 }),
    state: Type.Union([Type.Literal('attaching'), Type.Literal('active'), Type.Literal('detaching'), Type.Literal('failed')]),
    reason: Type.Optional(Type.String({ maxLength: 2048 })),
  },
  Strict,
);
// ---- end of the remote memory schemas ----


/** A VM's placement token (fencing token). */
const Token = Type.Integer({ minimum: 0 });

export const VmStatusSchema = Type.Object(
  {
    id: Id,
    name: Type.String(),
    state: Type.Union([
      Type.Literal('starting'), Type.Literal('running'), Type.Literal('paused'),
      Type.Literal('stopped'), Type.Literal('crashed'), Type.Literal('incoming'),
    ]),
    cpus: Type.Integer({ minimum: 1 }),
    memoryMiB: MiB,
    memoryActualMiB: MiB,
    memoryUsedMiB: Type.Optional(MiB),
    uptimeS: Type.Optional(Type.Number({ minimum: 0 })),
    reason: Type.Optional(Type.String()),
    /** The host sends this VM to another one now (a migrate command runs). */
    migrating: Type.Optional(Type.Boolean()),
    /** The placement token this copy was started with (see VmSpec.token). */
    token: Type.Optional(Token),
    /** Replica state of each disk with a replica target, while the VM runs. */
    replicas: Type.Optional(Type.Array(ReplicaStatusSchema, { maxItems: 16 })),
    /** Remote-memory slots in use, while the VM runs. */
    remoteMemory: Type.Optional(Type.Array(RemoteMemoryStatusSchema, { maxItems: 8 })),
    /** The guest's swap, all devices together (asked of guests with remote memory). */
    swapTotalMiB: Type.Optional(MiB),
    swapUsedMiB: Type.Optional(MiB),
    /** Major page faults since the guest booted (balloon statistics). */
    majorFaults: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  Strict,
);

export const HostFactsSchema = Type.Object(
  {
    hostname: Type.String({ minLength: 1, maxLength: 253 }),
    cpus: Type.Integer({ minimum: 1 }),
    memoryMiB: MiB,
    memoryFreeMiB: MiB,
    driver: Type.Union([Type.Literal('sim'), Type.Literal('qemu')]),
    address: Type.String({ maxLength: 255 }),
    capabilities: Type.Array(Type.String({ maxLength: 64 }), { maxItems: 32 }),
    accelerator: Type.Optional(Type.Union([Type.Literal('kvm'), Type.Literal('tcg'), Type.Literal('sim')])),
  },
  Strict,
);

const DiskSpecSchema = Type.Object(
  {
    path: Type.String({ minLength: 1 }),
    local: Type.Optional(Type.Boolean()),
    format: Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]),
    backingPath: Type.Optional(Type.String()),
    backingFormat: Type.Optional(Type.Union([Type.Literal('qcow2'), Type.Literal('raw')])),
    sizeMiB: Type.Optional(MiB),
    /** Mirror every write synchronously into this export on another host. */
    replica: Type.Optional(ReplicaTargetSchema),
    /** Incoming migration: this host serves the disk's copy, which becomes the disk. */
    replicaHere: Type.Optional(Type.Boolean()),
  },
  Strict,
);

export const VmSpecSchema = Type.Object(
  {
    id: Id,
    name: Type.String({ minLength: 1 }),
    cpus: Type.Integer({ minimum: 1 }),
    memoryMiB: Type.Integer({ minimum: 1 }),
    maxMemoryMiB: Type.Integer({ minimum: 1 }),
    boot: Type.Union([
      Type.Object({ kind: Type.Literal('disk') }, Strict),
      Type.Object(
        { kind: Type.Literal('kernel'), kernelPath: Type.String(), initrdPath: Type.String(), cmdline: Type.Optional(Type.String()), readyText: Type.Optional(Type.String({ maxLength: 256 })) },
        Strict,
      ),
      Type.Object({ kind: Type.Literal('none') }, Strict),
    ]),
    disks: Type.Array(DiskSpecSchema, { maxItems: 16 }),
    /** HA VMs are the ones a host stops by itself when its lease runs out. */
    ha: Type.Optional(Type.Boolean()),
    /** Grows with each placement of the VM; a host refuses commands about it with an older one. */
    token: Type.Optional(Token),
    nics: Type.Array(
      Type.Object(
        {
          mode: Type.Union([Type.Literal('user'), Type.Literal('bridge')]),
          bridge: Type.Optional(Type.String()),
          mac: Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' }),
        },
        Strict,
      ),
      { maxItems: 8 },
    ),
  },
  Strict,
);

/** A storage pool as commands name it: its type and where it is; the agent opens it there. */
const PoolRefSchema = Type.Object(
  { type: Type.Union([Type.Literal('local'), Type.Literal('shared')]), path: Type.String({ minLength: 1, maxLength: 4096, pattern: '^/' }) },
  Strict,
);
const VolumeName = Type.String({ minLength: 1, maxLength: 512, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$' });
const Format = Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]);

export const PoolReportSchema = Type.Object(
  {
    type: Type.Union([Type.Literal('local'), Type.Literal('shared')]),
    path: Type.String({ minLength: 1, maxLength: 4096 }),
    capacityMiB: Type.Optional(MiB),
    freeMiB: Type.Optional(MiB),
    error: Type.Optional(Type.String({ maxLength: 1024 })),
  },
  Strict,
);

export const CommandSchema = Type.Union([
  Type.Object({ op: Type.Literal('start'), spec: VmSpecSchema }, Strict),
  Type.Object(
    { op: Type.Literal('stop'), vmId: Id, force: Type.Optional(Type.Boolean()), timeoutMs: Type.Optional(Type.Integer({ minimum: 0 })), token: Type.Optional(Token) },
    Strict,
  ),
  Type.Object({ op: Type.Literal('reboot'), vmId: Id }, Strict),
  Type.Object({ op: Type.Literal('delete'), vmId: Id, token: Type.Optional(Token) }, Strict),
  Type.Object({ op: Type.Literal('setMemory'), vmId: Id, targetMiB: Type.Integer({ minimum: 1 }) }, Strict),
  Type.Object({ op: Type.Literal('prepareIncoming'), spec: VmSpecSchema }, Strict),
  Type.Object({
    op: Type.Literal('migrate'), vmId: Id, uri: Type.String({ minLength: 1 }), nbd: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
    /** The destination takes over the copies of the VM's replicated disks (MigrationTarget.viaReplica). */
    viaReplica: Type.Optional(Type.Boolean()),
  }, Strict),
  Type.Object({ op: Type.Literal('completeIncoming'), vmId: Id, timeoutMs: Type.Optional(Type.Integer({ minimum: 0 })) }, Strict),
  Type.Object({ op: Type.Literal('abortIncoming'), vmId: Id }, Strict),
  Type.Object({ op: Type.Literal('cancel'), commandId: Id }, Strict),
  Type.Object({ op: Type.Literal('consoleWrite'), vmId: Id, data: Type.String({ maxLength: 4096 }) }, Strict),
  Type.Object({ op: Type.Literal('consoleHistory'), vmId: Id }, Strict),
  Type.Object({ op: Type.Literal('growDisk'), vmId: Id, index: Type.Integer({ minimum: 0, maximum: 15 }), sizeMiB: Type.Integer({ minimum: 1 }) }, Strict),
  /** Volume operations run where the pool is: the answer carries the volume and the pool's free space. */
  Type.Object(
    {
      op: Type.Literal('volumeCreate'), pool: PoolRefSchema, name: VolumeName, format: Format, sizeMiB: Type.Integer({ minimum: 1 }),
      backing: Type.Optional(Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096, pattern: '^/' }), format: Format }, Strict)),
    },
    Strict,
  ),
  Type.Object({ op: Type.Literal('volumeGrow'), pool: PoolRefSchema, name: VolumeName, sizeMiB: Type.Integer({ minimum: 1 }) }, Strict),
  Type.Object({ op: Type.Literal('volumeDelete'), pool: PoolRefSchema, name: VolumeName }, Strict),
  /** Serve a volume over NBD for another host (replication, memory loans); `address` defaults to the host's. */
  Type.Object({ op: Type.Literal('volumeExport'), pool: PoolRefSchema, name: VolumeName, address: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })) }, Strict),
  Type.Object({ op: Type.Literal('volumeUnexport'), pool: PoolRefSchema, name: VolumeName }, Strict),
  /** Start or stop streaming a VM's console output to control (only while someone watches it). */
  Type.Object({ op: Type.Literal('consoleAttach'), vmId: Id }, Strict),
  Type.Object({ op: Type.Literal('consoleDetach'), vmId: Id }, Strict),
  // ---- Synchronous volume replicas ----
  /**
   * Replica host: create the replica image if missing (the primary volume's format and size) and serve it
   * writable over NBD on `address` (default: the host's). Answers `{ replica: ReplicaTarget, volume, pool }`;
   * again for a volume already served, the same `replica`.
   */
  Type.Object(
    {
      op: Type.Literal('replicaExport'), pool: PoolRefSchema, name: VolumeName, format: Format, sizeMiB: Type.Integer({ minimum: 1 }),
      address: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    },
    Strict,
  ),
  /** Replica host: stop serving it (`delete`: and remove the image). Answers `{ pool }`. */
  Type.Object({ op: Type.Literal('replicaUnexport'), pool: PoolRefSchema, name: VolumeName, delete: Type.Optional(Type.Boolean()) }, Strict),
  /** Primary host: mirror disk `disk` of a running VM into `target` (rebuilds from scratch). Answers the VM status. */
  Type.Object({ op: Type.Literal('replicaAttach'), vmId: Id, disk: Type.Integer({ minimum: 0, maximum: 15 }), target: ReplicaTargetSchema }, Strict),
  /** Primary host: end the mirror of disk `disk` cleanly and forget its target. Answers the VM status. */
  Type.Object({ op: Type.Literal('replicaDetach'), vmId: Id, disk: Type.Integer({ minimum: 0, maximum: 15 }) }, Strict),
  // ---- end of the replica commands ----
  // ---- Remote memory ----
  /**
   * Donor host: set aside `sizeMiB` of RAM (a tmpfs image with a swap signature) and serve it writable over
   * NBD on `address` (default: the host's). Answers `{ target: RemoteMemoryTarget, sizeMiB }`; the same name
   * again answers the same target.
   * Refused with DONOR_RESERVE when the host's available memory would fall under its reserve.
   */
  Type.Object(
    { op: Type.Literal('memoryExport'), name: VolumeName, sizeMiB: Type.Integer({ minimum: 1 }), address: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })) },
    Strict,
  ),
  /** Donor host: stop serving it and free the RAM. Idempotent. */
  Type.Object({ op: Type.Literal('memoryUnexport'), name: VolumeName }, Strict),
  /** Borrower host: hot-plug `target` into slot `slot` of a running VM as swap. Answers the VM status once the guest swaps to it. */
  Type.Object(
    { op: Type.Literal('remoteMemoryAttach'), vmId: Id, slot: RemoteMemorySlot, target: RemoteMemoryTargetSchema, sizeMiB: Type.Integer({ minimum: 1 }) },
    Strict,
  ),
  /** Borrower host: guest swapoff, then unplug. Idempotent; answers the VM status (nothing for a VM that is gone). */
  Type.Object({ op: Type.Literal('remoteMemoryDetach'), vmId: Id, slot: RemoteMemorySlot }, Strict),
  // ---- end of the remote memory commands ----
]);

export const AgentMessageSchema = Type.Union([
  Type.Object({ type: Type.Literal('hello'), facts: HostFactsSchema, vms: Type.Array(VmStatusSchema), agentVersion: Type.String() }, Strict),
  Type.Object(
    {
      type: Type.Literal('heartbeat'), seq: Type.Integer({ minimum: 0 }), memoryFreeMiB: MiB,
      /** RAM this host lends to others now (the sum of its memory exports). */
      memoryLentMiB: Type.Optional(MiB),
    },
    Strict,
  ),
  Type.Object({ type: Type.Literal('vms'), full: Type.Boolean(), vms: Type.Array(VmStatusSchema) }, Strict),
  Type.Object({ type: Type.Literal('result'), id: Id, ok: Type.Literal(true), value: Type.Optional(Type.Unknown()) }, Strict),
  Type.Object(
    {
      type: Type.Literal('result'),
      id: Id,
      ok: Type.Literal(false),
      error: Type.Object({ code: Type.String(), message: Type.String() }, Strict),
    },
    Strict,
  ),
  Type.Object({ type: Type.Literal('progress'), id: Id, fraction: Type.Number({ minimum: 0, maximum: 1 }), message: Type.Optional(Type.String()) }, Strict),
  Type.Object({ type: Type.Literal('console'), vmId: Id, data: Type.String() }, Strict),
  /** The pools this host reaches (its local one and the shared ones control named), with their free space. */
  Type.Object(
    { type: Type.Literal('pools'), pools: Type.Array(PoolReportSchema, { maxItems: 64 }), memoryLentMiB: Type.Optional(MiB) },
    Strict,
  ),
]);

const Url = Type.String({ minLength: 1, maxLength: 2048 });
/** The control replicas alive now, the leader's URL first when there is one. */
const ReplicaUrls = Type.Array(Url, { maxItems: 64 });
/** Grows with every new leader; a command with a lower one than an agent has seen is a deposed leader's. */
const Epoch = Type.Integer({ minimum: 0 });

export const ControlMessageSchema = Type.Union([
  Type.Object(
    {
      type: Type.Literal('welcome'), hostId: Id, heartbeatIntervalMs: Type.Integer({ minimum: 10 }), epoch: Epoch, leader: Type.Optional(Url), replicas: ReplicaUrls,
      /** The shared pools every host should reach; the agent reports on them. */
      pools: Type.Optional(Type.Array(PoolRefSchema, { maxItems: 64 })),
    },
    Strict,
  ),
  Type.Object({ type: Type.Literal('command'), id: Id, epoch: Epoch, command: CommandSchema }, Strict),
  /**
   * The host's lease is renewed for ttlMs, counted by the agent from when it sent beat `seq` (its hello
   * when there is none). Past it, the host stops its HA VMs: control may restart them elsewhere.
   */
  Type.Object({ type: Type.Literal('lease'), ttlMs: Type.Integer({ minimum: 1 }), seq: Type.Optional(Type.Integer({ minimum: 0 })) }, Strict),
  /** The set of replicas changed while the agent is connected. */
  Type.Object({ type: Type.Literal('replicas'), leader: Type.Optional(Url), replicas: ReplicaUrls }, Strict),
  /**
   * This replica does not lead: dial the leader (or, with none known yet, this replica again after
   * retryMs). The connection is closed right after.
   */
  Type.Object(
    {
      type: Type.Literal('redirect'), leader: Type.Optional(Url), replicas: ReplicaUrls, retryMs: Type.Integer({ minimum: 0 }),
      /** The host's lease was renewed for this long, counted from when the agent dialled. */
      leaseMs: Type.Optional(Type.Integer({ minimum: 1 })),
    },
    Strict,
  ),
]);

export type VmStatusMsg = Static<typeof VmStatusSchema>;
export type HostFactsMsg = Static<typeof HostFactsSchema>;
export type VmSpecMsg = Static<typeof VmSpecSchema>;
export type Command = Static<typeof CommandSchema>;
export type PoolRefMsg = Static<typeof PoolRefSchema>;
export type PoolReportMsg = Static<typeof PoolReportSchema>;
export type ReplicaTargetMsg = Static<typeof ReplicaTargetSchema>;
export type ReplicaStatusMsg = Static<typeof ReplicaStatusSchema>;
export type RemoteMemoryStatusMsg = Static<typeof RemoteMemoryStatusSchema>;
export type AgentMessage = Static<typeof AgentMessageSchema>;
export type ControlMessage = Static<typeof ControlMessageSchema>;

const agentCheck = Compile(AgentMessageSchema);
const controlCheck = Compile(ControlMessageSchema);

export type Parsed<T> = { ok: true; message: T } | { ok: false; error: string };

function parse<T>(raw: string, check: { Check(v: unknown): boolean; Errors(v: unknown): Iterable<{ instancePath: string; message: string }> }): Parsed<T> {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return { ok: false, error: 'message is not JSON' };
  }
  if (check.Check(value)) return { ok: true, message: value as T };
  const first = [...check.Errors(value)][0];
  const type = typeof value === 'object' && value && 'type' in value ? String((value as { type: unknown }).type) : '?';
  return { ok: false, error: `invalid ${type} message${first ? `: ${first.instancePath || '/'} ${first.message}` : ''}` };
}

export const parseAgentMessage = (raw: string) => parse<AgentMessage>(raw, agentCheck);
export const parseControlMessage = (raw: string) => parse<ControlMessage>(raw, controlCheck);

/** The agent HTTP join call: a join token buys a host credential. */
export const JoinRequestSchema = Type.Object(
  { joinToken: Type.String({ minLength: 1, maxLength: 256 }), name: Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-zA-Z0-9][a-zA-Z0-9._-]*$' }), facts: HostFactsSchema },
  Strict,
);
export const JoinResponseSchema = Type.Object({ hostId: Id, credential: Type.String() }, Strict);
export type JoinRequest = Static<typeof JoinRequestSchema>;
export type JoinResponse = Static<typeof JoinResponseSchema>;
