// The QMP commands awan uses: argument and answer types, and checks that turn QEMU's JSON into them.

export interface MigrationInfo {
  /** none, setup, active, postcopy-active, completed, failed, cancelling, cancelled, … */
  status: string;
  totalTimeMs?: number;
  downtimeMs?: number;
  expectedDowntimeMs?: number;
  ram?: { transferred: number; remaining: number; total: number };
  errorDesc?: string;
}

export interface MemoryDeviceInfo {
  type: string;
  id?: string;
  size: number;
  requestedSize?: number;
  maxSize?: number;
}

type NoArgs = undefined;

export interface QmpCommands {
  qmp_capabilities: { args: NoArgs; ret: void };
  'query-status': { args: NoArgs; ret: { running: boolean; status: string } };
  cont: { args: NoArgs; ret: void };
  stop: { args: NoArgs; ret: void };
  quit: { args: NoArgs; ret: void };
  system_powerdown: { args: NoArgs; ret: void };
  system_reset: { args: NoArgs; ret: void };
  balloon: { args: { value: number }; ret: void };
  'query-balloon': { args: NoArgs; ret: { actual: number } };
  'qom-set': { args: { path: string; property: string; value: unknown }; ret: void };
  'qom-get': { args: { path: string; property: string }; ret: unknown };
  'query-memory-devices': { args: NoArgs; ret: MemoryDeviceInfo[] };
  migrate: { args: { uri: string }; ret: void };
  migrate_cancel: { args: NoArgs; ret: void };
  'migrate-set-capabilities': {
    args: { capabilities: Array<{ capability: string; state: boolean }> };
    ret: void;
  };
  'migrate-set-parameters': { args: Record<string, unknown>; ret: void };
  'query-migrate': { args: NoArgs; ret: MigrationInfo };
  device_add: { args: Record<string, unknown>; ret: void };
  device_del: { args: { id: string }; ret: void };
  'blockdev-add': { args: Record<string, unknown>; ret: void };
  'blockdev-del': { args: { 'node-name': string }; ret: void };
  'blockdev-mirror': {
    args: {
      'job-id': string; device: string; target: string; sync: 'top' | 'full';
      'copy-mode'?: 'background' | 'write-blocking'; 'on-source-error'?: 'report' | 'stop'; 'on-target-error'?: 'report' | 'stop';
      'auto-dismiss'?: boolean;
    };
    ret: void;
  };
  'query-block-jobs': { args: NoArgs; ret: BlockJobInfo[] };
  'block-job-cancel': { args: { device: string; force?: boolean }; ret: void };
  'job-dismiss': { args: { id: string }; ret: void };
  /** Shuts a network block node's connection down at once (its requests then fail or wait to reconnect). */
  yank: { args: { instances: Array<{ type: 'block-node'; 'node-name': string }> }; ret: void };
  'nbd-server-start': { args: { addr: { type: 'inet'; data: { host: string; port: string } } }; ret: void };
  'nbd-server-stop': { args: NoArgs; ret: void };
  'block-export-add': { args: { type: 'nbd'; id: string; 'node-name': string; name: string; writable: boolean }; ret: void };
}

export interface BlockJobInfo {
  device: string;
  ready: boolean;
  offset: number;
  len: number;
  /** running, ready, paused, aborting, concluded, … (QEMU's JobStatus). */
  status: string;
  /** Set once a job ended without success. */
  error?: string;
}

export class QmpDecodeError extends Error {
  constructor(command: string, detail: string) {
    super(`${command}: unexpected answer from QEMU (${detail})`);
    this.name = 'QmpDecodeError';
  }
}

function record(command: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new QmpDecodeError(command, 'not an object');
  }
  return value as Record<string, unknown>;
}

function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

const none = (): void => undefined;

function queryStatus(raw: unknown): { running: boolean; status: string } {
  const r = record('query-status', raw);
  if (typeof r.running !== 'boolean' || typeof r.status !== 'string') {
    throw new QmpDecodeError('query-status', 'missing running/status');
  }
  return { running: r.running, status: r.status };
}

function queryBalloon(raw: unknown): { actual: number } {
  const actual = num(record('query-balloon', raw).actual);
  if (actual === undefined) throw new QmpDecodeError('query-balloon', 'missing actual');
  return { actual };
}

function queryMigrate(raw: unknown): MigrationInfo {
  const r = record('query-migrate', raw);
  // Before the first migration QEMU answers {} (no status).
  const info: MigrationInfo = { status: typeof r.status === 'string' ? r.status : 'none' };
  info.totalTimeMs = num(r['total-time']);
  info.downtimeMs = num(r.downtime);
  info.expectedDowntimeMs = num(r['expected-downtime']);
  if (typeof r['error-desc'] === 'string') info.errorDesc = r['error-desc'];
  if (typeof r.ram === 'object' && r.ram !== null) {
    const ram = r.ram as Record<string, unknown>;
    info.ram = { transferred: num(ram.transferred) ?? 0, remaining: num(ram.remaining) ?? 0, total: num(ram.total) ?? 0 };
  }
  return info;
}

function queryMemoryDevices(raw: unknown): MemoryDeviceInfo[] {
  if (!Array.isArray(raw)) throw new QmpDecodeError('query-memory-devices', 'not a list');
  return raw.map((item) => {
    const r = record('query-memory-devices', item);
    const data = record('query-memory-devices', r.data);
    const dev: MemoryDeviceInfo = { type: typeof r.type === 'string' ? r.type : 'unknown', size: num(data.size) ?? 0 };
    if (typeof data.id === 'string') dev.id = data.id;
    dev.requestedSize = num(data['requested-size']);
    dev.maxSize = num(data['max-size']);
    return dev;
  });
}

function queryBlockJobs(raw: unknown): BlockJobInfo[] {
  if (!Array.isArray(raw)) throw new QmpDecodeError('query-block-jobs', 'not a list');
  return raw.map((item) => {
    const r = record('query-block-jobs', item);
    const job: BlockJobInfo = {
      device: typeof r.device === 'string' ? r.device : '', ready: r.ready === true, offset: num(r.offset) ?? 0, len: num(r.len) ?? 0,
      status: typeof r.status === 'string' ? r.status : 'unknown',
    };
    if (typeof r.error === 'string') job.error = r.error;
    return job;
  });
}

/** One check per command; commands without an interesting answer ignore it. */
export const decoders: { [K in keyof QmpCommands]: (raw: unknown) => QmpCommands[K]['ret'] } = {
  qmp_capabilities: none,
  'query-status': queryStatus,
  cont: none,
  stop: none,
  quit: none,
  system_powerdown: none,
  system_reset: none,
  balloon: none,
  'query-balloon': queryBalloon,
  'qom-set': none,
  'qom-get': (raw) => raw,
  'query-memory-devices': queryMemoryDevices,
  migrate: none,
  migrate_cancel: none,
  'migrate-set-capabilities': none,
  'migrate-set-parameters': none,
  'query-migrate': queryMigrate,
  device_add: none,
  device_del: none,
  'blockdev-add': none,
  'blockdev-del': none,
  'blockdev-mirror': none,
  'query-block-jobs': queryBlockJobs,
  'block-job-cancel': none,
  'job-dismiss': none,
  yank: none,
  'nbd-server-start': none,
  'nbd-server-stop': none,
  'block-export-add': none,
};
