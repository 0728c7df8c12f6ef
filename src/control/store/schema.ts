// Row types of every table, as Kysely sees them. Times are ISO strings, flags 0/1, JSON is text.
import type { Generated, Insertable, Selectable, Updateable } from 'kysely';

export interface UsersTable {
  id: string;
  username: string;
  password_hash: string;
  role: 'admin' | 'operator' | 'viewer';
  created_at: string;
}

export interface ApiTokensTable {
  id: string;
  user_id: string;
  name: string;
  kind: 'session' | 'api';
  token_hash: string;
  expires_at: string | null;
  created_at: string;
  last_used_at: string | null;
}

export interface JoinTokensTable {
  id: string;
  token_hash: string;
  created_by: string;
  expires_at: string;
  used_at: string | null;
  host_id: string | null;
}

export interface HostsTable {
  id: string;
  name: string;
  state: string;
  maintenance: number;
  cpus: number;
  memory_mib: number;
  memory_free_mib: number;
  address: string;
  driver: string;
  accelerator: string | null;
  capabilities: string;
  labels: string;
  zone: string | null;
  credential_hash: string;
  last_heartbeat_at: string | null;
  generation: number;
  created_at: string;
  updated_at: string;
  /** Spec: the drain the API asked for (its task); the drain controller carries it out. */
  drain_task_id: string | null;
  /** Status, written by the leader in batches: an agent holds a connection to it. */
  connected: number;
  lease_expires_at: string | null;
  vm_count: number;
  memory_allocated_mib: number;
  /** Bumped by every status write, which checks it (compare-and-set). */
  status_version: number;
  /** The leader epoch of the last status write: a lower epoch may not overwrite it. */
  status_epoch: number;
  /** Status: since when the host is failed (its lease ran out), and why it is in its state. */
  failed_at: string | null;
  state_reason: string | null;
  /** Status: when the host was declared failed lately (a JSON array of ISO times, within the flap window). */
  recent_failures: string | null;
  /** Status: since when the host is quarantined for flapping (null unless it is). */
  quarantined_at: string | null;
  /** Spec: when an admin last lifted the host's quarantine (activate); a quarantine older than this ends. */
  quarantine_lifted_at: string | null;
  /** Spec: the command that powers the host off before HA restarts its VMs (JSON `{command, timeoutS}`). */
  power_fence: string | null;
  /** Status: the failure (its `failed_at`) for which the power fence switched the host off. */
  power_fenced_for: string | null;
}

export interface ImagesTable {
  id: string;
  name: string;
  format: 'qcow2' | 'raw' | 'kernel';
  path: string | null;
  kernel_path: string | null;
  initrd_path: string | null;
  cmdline: string | null;
  ready_text: string | null;
  size_mib: number;
  os: string | null;
  /** 1 when the file is control's copy in the pool (deleted with the image). */
  imported: Generated<number>;
  created_at: string;
}

export interface VmsTable {
  id: string;
  name: string;
  cpus: number;
  memory_mib: number;
  max_memory_mib: number;
  image_id: string | null;
  disk_gib: number;
  local_disk: number;
  /** Spec: the disk (on the host, as with local_disk) keeps a synchronous copy on a second host. */
  replicated: number;
  ha: number;
  placement_labels: string;
  anti_affinity: string | null;
  nics: string;
  desired_power: 'running' | 'stopped';
  deleting: number;
  /** Spec: the memory the guest should hold while it runs (null: its boot memory). */
  memory_target_mib: number | null;
  /** Spec: reboots asked for so far; status `reboot_handled` counts those done or refused. */
  reboot_request: number;
  /** Spec: JSON {id, targetHostId | null} of the migration asked for; status `migrate_handled` names the last one settled. */
  migrate_request: string | null;
  host_id: string | null;
  /** Status: where a migration in progress goes. */
  target_host_id: string | null;
  phase: string;
  message: string | null;
  memory_actual_mib: number | null;
  /** Status: JSON of the one command in flight (see reconcile/vm-op.ts). */
  op: string | null;
  reboot_handled: number;
  migrate_handled: string | null;
  /** Status: the memory target last applied to the running guest (cleared when it boots or moves). */
  memory_applied_mib: number | null;
  /** Status: grows with each placement (a start on a host, a migration's destination); commands carry it. */
  placement_token: number;
  /** Spec: HA VMs of a failed host restart in descending priority. */
  ha_priority: number;
  /** Status: JSON array of ISO times of recent HA restarts (the restart limit counts them). */
  ha_restarts: string | null;
  generation: number;
  observed_generation: number;
  resource_version: number;
  created_at: string;
  updated_at: string;
}

export interface PoolsTable {
  id: string;
  name: string;
  type: 'local' | 'shared';
  path: string;
  /** The host of a local pool; null for a shared one. */
  host_id: string | null;
  /** Reported by agents; null until one has. */
  capacity_mib: number | null;
  free_mib: number | null;
  reported_at: string | null;
  created_at: string;
  updated_at: string;
}

export type VolumeState = 'creating' | 'ready' | 'growing' | 'deleting' | 'failed';

export interface VolumesTable {
  id: string;
  pool_id: string;
  /** Relative to the pool. */
  name: string;
  vm_id: string | null;
  format: 'qcow2' | 'raw';
  backing_path: string | null;
  backing_format: 'qcow2' | 'raw' | null;
  /** Spec: the size asked for, and whether it should go. */
  size_mib: number;
  deleting: number;
  generation: number;
  /** Status, the volume controller's. */
  state: VolumeState;
  actual_size_mib: number | null;
  observed_generation: number;
  message: string | null;
  /** A VM disk on its host with a synchronous copy on another one; the rest is the replicator's status. */
  replicated: number;
  replica_host_id: string | null;
  replica_state: ReplicaState | null;
  replica_message: string | null;
  /** JSON: where the copy is served (a ReplicaTarget), once served. */
  replica_target: string | null;
  replica_changed_at: string | null;
  /** The VM's placement token when its host last reported the state: a copy counts for that run only. */
  replica_token: number | null;
  created_at: string;
  updated_at: string;
}

/** `placing`: a host is chosen and the copy being set up; then as the primary's QEMU reports it. */
export type ReplicaState = 'placing' | 'rebuilding' | 'synced' | 'degraded';

/** A copy of a volume that no longer counts, on a host that was away: deleted once the host is back. */
export interface VolumeLeftoversTable {
  host_id: string;
  /** The volume's name in the host's local pool. */
  name: string;
  created_at: string;
}

export type LeaseState = 'requested' | 'granting' | 'active' | 'returning' | 'returned' | 'failed';
export type LeaseKind = 'temporary' | 'permanent';
export type LeaseMechanism = 'reclaim' | 'grow' | 'remote' | 'migrate';

/** Memory a VM borrows (features/memory): spec from the API, status (state onwards) from the memory broker. */
export interface MemoryLeasesTable {
  id: string;
  vm_id: string;
  size_mib: number;
  kind: LeaseKind;
  mechanism_asked: LeaseMechanism | 'auto';
  /** The donor host the request named, if any. */
  donor_asked: string | null;
  ttl_s: number | null;
  /** `api`: a user asked; `policy`: the broker acted on memory pressure. */
  origin: 'api' | 'policy';
  created_by: string | null;
  /** Spec: the user asked to give it back / to keep it for good. */
  return_requested: number;
  permanent_requested: number;
  /** The task of the request under way (the grant, a return, a make-permanent). */
  task_id: string | null;
  state: LeaseState;
  mechanism: LeaseMechanism | null;
  borrower_host_id: string | null;
  donor_host_id: string | null;
  message: string | null;
  /** JSON: what the broker did and has yet to undo (see memory/plan.ts). */
  plan: string | null;
  step_deadline: string | null;
  expires_at: string | null;
  granted_at: string | null;
  ended_at: string | null;
  resource_version: number;
  created_at: string;
  updated_at: string;
}

export interface TasksTable {
  id: string;
  kind: string;
  target_kind: string;
  target_id: string;
  state: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress: number;
  message: string | null;
  error_code: string | null;
  error_message: string | null;
  result: string | null;
  params: string | null;
  created_by: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
}

export interface EventsTable {
  seq: Generated<number>;
  at: string;
  type: string;
  object_kind: string;
  object_id: string;
  message: string;
  data: string | null;
}

export interface Database {
  users: UsersTable;
  api_tokens: ApiTokensTable;
  join_tokens: JoinTokensTable;
  hosts: HostsTable;
  images: ImagesTable;
  vms: VmsTable;
  pools: PoolsTable;
  volumes: VolumesTable;
  volume_leftovers: VolumeLeftoversTable;
  memory_leases: MemoryLeasesTable;
  tasks: TasksTable;
  events: EventsTable;
}

export type HostRow = Selectable<HostsTable>;
export type VmRow = Selectable<VmsTable>;
export type NewVm = Insertable<VmsTable>;
export type VmUpdate = Updateable<VmsTable>;
export type PoolRow = Selectable<PoolsTable>;
export type VolumeRow = Selectable<VolumesTable>;
export type TaskRow = Selectable<TasksTable>;
export type ImageRow = Selectable<ImagesTable>;
export type EventRow = Selectable<EventsTable>;
export type UserRow = Selectable<UsersTable>;
export type LeaseRow = Selectable<MemoryLeasesTable>;
