// Boots, stops and re-attaches QEMU processes for VMs; the driver decides when, this module knows how.
import { readFile, stat } from 'node:fs/promises';
import { DriverError } from '../types.ts';
import type { AccelLog } from './accel.ts';
import { qemuArgs, type Accel } from './args.ts';
import { ensureDisk } from './images.ts';
import { setUpNics } from './network.ts';
import type { VmPaths } from './paths.ts';
import { isQemuAlive, killHard, launchQemu, readPid, startedAtMs } from './process.ts';
import { QmpClient } from './qmp.ts';
import { QemuVm, type VmHooks, type VmRecord } from './vm.ts';
import { appendHistory, catchUpConsole } from './console.ts';

const POWERDOWN_REPEAT_MS = 5000;

export interface LifecycleContext {
  binary: string;
  /** Owner of host resources such as tap devices: the driver's data dir. */
  owner: string;
  hooks: VmHooks;
  bootTimeoutMs: number;
  guestReadyPattern?: RegExp;
  log: AccelLog;
}

/** The guest never printed its sign of life in time: under KVM, a reason to doubt the accelerator verdict. */
export class BootTimeoutError extends DriverError {
  constructor(message: string) {
    super('BOOT_FAILED', message);
  }
}

/** Host memory the kernel says is available for new allocations. */
export async function hostAvailableMiB(): Promise<number> {
  const meminfo = await readFile('/proc/meminfo', 'utf8');
  const kib = Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
  return Math.floor(kib / 1024);
}

/** Unix socket paths are limited to 108 bytes; a deep data dir must fail clearly, not with ENAMETOOLONG. */
function checkSocketPaths(paths: VmPaths): void {
  for (const p of [paths.qmp, paths.serialSocket]) {
    if (Buffer.byteLength(p) > 100) throw new DriverError('BOOT_FAILED', `socket path too long (${p}); use a shorter data dir`);
  }
}

/** Starts QEMU for `vm` and takes it over. With `incoming` it listens for a migration instead of booting. */
export async function launchVm(
  ctx: LifecycleContext,
  vm: QemuVm,
  opts: { accel: Accel; incoming?: string; paused?: boolean; signal?: AbortSignal },
): Promise<void> {
  const spec = vm.spec;
  checkSocketPaths(vm.paths);
  // A destination opens the shared disks the source already created; its local disks it makes afresh, as
  // overlays the source then mirrors into.
  for (const disk of spec.disks) if (!opts.incoming || disk.local) await ensureDisk(disk);
  const { backends, warnings } = await setUpNics(ctx.owner, spec.id, spec.nics);
  for (const w of warnings) ctx.log(w, { vmId: spec.id });
  const args = qemuArgs({ spec, paths: vm.paths, accel: opts.accel, nics: backends, incoming: opts.incoming, paused: opts.paused });
  // What an earlier QEMU of this VM logged is settled into the history first: this boot's ready text must be its own.
  const files = { qemuLog: vm.paths.serialLog, history: vm.paths.consoleLog, offset: vm.paths.consoleOffset, socket: vm.paths.serialSocket };
  catchUpConsole(files, appendHistory(vm.paths.consoleLog), false);
  let logSize = 0;
  try {
    logSize = (await stat(vm.paths.consoleLog)).size;
  } catch {
    // no console history yet
  }
  const { launched, qmp } = await launchQemu(ctx.binary, args, vm.paths, { timeoutMs: ctx.bootTimeoutMs, signal: opts.signal });
  vm.attach(qmp, launched.pid, launched);
  vm.bootedAtMs = Date.now();
  if (opts.incoming) return;
  try {
    const status = await qmp.call('query-status', undefined);
    if (!status.running) throw new DriverError('BOOT_FAILED', `${spec.id}: QEMU is ${status.status}, not running`);
    await vm.enableStats();
    // The image's own sign of life wins over the driver-wide one; it is literal text, never a regex.
    const ready = spec.boot.kind === 'kernel' ? (spec.boot.readyText ? new RegExp(escapeRegExp(spec.boot.readyText)) : ctx.guestReadyPattern) : undefined;
    if (ready) await waitForSerial(vm, logSize, ready, ctx.bootTimeoutMs, opts.signal);
  } catch (err) {
    vm.expectedExit = { reason: 'boot failed' };
    await killHard(launched.pid, vm.paths.dir);
    await vm.waitExit(5000);
    if (err instanceof DriverError) throw err;
    throw new DriverError('BOOT_FAILED', `${spec.id}: ${String(err)}`);
  }
}

/** Waits for the guest to print `pattern` on its serial console (after byte `from` of the console history). */
async function waitForSerial(vm: QemuVm, from: number, pattern: RegExp, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (signal?.aborted) throw new DriverError('BOOT_FAILED', `${vm.id}: start cancelled`);
    if (!vm.qmp) throw new DriverError('BOOT_FAILED', `${vm.id}: QEMU exited during boot (${vm.reason ?? 'no reason'})`);
    if (vm.state === 'crashed') throw new DriverError('BOOT_FAILED', `${vm.id}: ${vm.reason ?? 'crashed during boot'}`);
    const log = await readFile(vm.paths.consoleLog).catch(() => Buffer.alloc(0));
    if (pattern.test(log.subarray(from).toString('utf8'))) return;
    if (Date.now() > deadline) throw new BootTimeoutError(`${vm.id}: the guest did not boot within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Makes QEMU exit. Graceful: ACPI powerdown, then `quit` after `timeoutMs` (a guest may ignore the button);
 * forced: `quit` at once. SIGKILL when QMP does not get it done.
 */
export async function stopQemu(
  vm: QemuVm,
  opts: { force: boolean; timeoutMs: number; reason?: string; beforeQuit?: (qmp: QmpClient) => Promise<void> },
): Promise<void> {
  const qmp = vm.qmp;
  const pid = vm.pid;
  if (pid === undefined) return;
  if (!qmp) {
    // Re-attached without QMP: the process is all we can reach.
    await killHard(pid, vm.paths.dir);
    vm.pid = undefined;
    vm.setState('stopped', opts.reason);
    return;
  }
  vm.expectedExit = { reason: opts.reason };
  if (!opts.force && vm.state === 'running') {
    // The button is edge-triggered: a guest still booting misses a press, so press again now and then.
    const deadline = Date.now() + opts.timeoutMs;
    while (Date.now() < deadline) {
      const sent = await qmp.call('system_powerdown', undefined).then(() => true, () => false);
      if (!sent) break;
      if (await vm.waitExit(Math.min(POWERDOWN_REPEAT_MS, Math.max(0, deadline - Date.now())))) return;
    }
  }
  // A guest that powered off took its block jobs along; one that did not has them ended cleanly first.
  await opts.beforeQuit?.(qmp).catch(() => undefined);
  await qmp.call('quit', undefined, { timeoutMs: 5000 }).catch(() => undefined);
  if (await vm.waitExit(5000)) return;
  await killHard(pid, vm.paths.dir);
  await vm.waitExit(15_000);
}

/** Rebuilds a VM from its directory after a driver restart: attached when its QEMU still runs, else stopped. */
export async function reattach(ctx: LifecycleContext, record: VmRecord, paths: VmPaths): Promise<QemuVm | undefined> {
  const vm = new QemuVm(record, paths, ctx.hooks);
  const pid = await readPid(paths.pidfile);
  if (pid === undefined || !isQemuAlive(pid, paths.dir)) {
    // An incoming VM that is gone will never arrive: nothing to keep.
    if (record.mode === 'incoming') return undefined;
    vm.state = 'stopped';
    return vm;
  }
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(paths.qmp, { timeoutMs: 5000 });
  } catch (err) {
    // QEMU accepts one QMP client: another agent may still hold it. The VM runs; we cannot steer it.
    vm.pid = pid;
    vm.state = 'running';
    vm.reason = `QMP unavailable: ${String(err)}`;
    ctx.log('re-attach without QMP', { vmId: record.spec.id, err: String(err) });
    return vm;
  }
  vm.attach(qmp, pid);
  vm.bootedAtMs = await startedAtMs(paths.pidfile);
  const status = await qmp.call('query-status', undefined).catch(() => undefined);
  if (status?.status === 'inmigrate') {
    vm.state = 'incoming';
  } else if (status?.running) {
    vm.state = 'running';
    if (record.mode === 'incoming') {
      vm.record = { ...record, mode: 'run' };
      delete vm.record.incomingUri;
      await vm.saveRecord();
    }
    await vm.enableStats();
  } else if (status?.status === 'postmigrate') {
    // It left for another host while no agent watched; the copy there is the VM now.
    vm.expectedExit = { reason: 'migrated to another host' };
    await qmp.call('quit', undefined).catch(() => undefined);
    await vm.waitExit(5000);
    return undefined;
  } else if (status?.status === 'paused' && (await pausedForFailedMigration(qmp))) {
    // awan pauses a guest only to copy it; that copy failed while no agent watched. Whether this copy is
    // still the VM is control's to say (it may run elsewhere by now): it stays paused until a start.
    vm.state = 'paused';
    vm.reason = 'paused by a migration that failed while no agent watched; a start resumes it';
  } else {
    vm.state = 'paused';
  }
  return vm;
}

async function pausedForFailedMigration(qmp: QmpClient): Promise<boolean> {
  const info = await qmp.call('query-migrate', undefined).catch(() => undefined);
  return info?.status === 'failed' || info?.status === 'cancelled';
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
