// Guest memory: what the VM has (balloon + virtio-mem), what the guest uses, and safe moves between sizes.
import { DriverError, type DriverVmSpec } from '../types.ts';
import { BALLOON_PATH, VMEM_BLOCK_BYTES, VMEM_ID, hasVirtioMem, virtioMemSizeMiB } from './args.ts';
import type { QmpClient } from './qmp.ts';

const MiB = 1024 * 1024;

export interface GuestMemory {
  /** What the guest's kernel holds that it could not give back: total minus available. */
  usedMiB: number;
  availableMiB: number;
  totalMiB: number;
  /** Page faults the guest served from swap or disk, when it reports them. */
  majorFaults?: number;
}

export interface MemorySnapshot {
  balloonMiB: number;
  virtioMemMiB: number;
  /** balloonMiB + virtioMemMiB: what the guest has now. */
  actualMiB: number;
  guest?: GuestMemory;
}

/** Balloon statistics the guest reported, if it has yet; -1 marks a figure it does not report. */
export async function guestMemory(qmp: QmpClient): Promise<GuestMemory | undefined> {
  const raw = await qmp.call('qom-get', { path: BALLOON_PATH, property: 'guest-stats' });
  if (typeof raw !== 'object' || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  if (typeof r['last-update'] !== 'number' || r['last-update'] === 0) return undefined;
  const stats = r.stats as Record<string, unknown> | undefined;
  const total = stats?.['stat-total-memory'];
  const available = stats?.['stat-available-memory'];
  if (typeof total !== 'number' || typeof available !== 'number' || total <= 0 || available < 0) return undefined;
  const guest: GuestMemory = {
    totalMiB: Math.round(total / MiB),
    availableMiB: Math.floor(available / MiB),
    usedMiB: Math.ceil((total - available) / MiB),
  };
  const majorFaults = stats?.['stat-major-faults'];
  if (typeof majorFaults === 'number' && majorFaults >= 0) guest.majorFaults = majorFaults;
  return guest;
}

export async function memorySnapshot(qmp: QmpClient, spec: DriverVmSpec): Promise<MemorySnapshot> {
  const [balloon, devices, guest] = await Promise.all([
    qmp.call('query-balloon', undefined),
    hasVirtioMem(spec) ? qmp.call('query-memory-devices', undefined) : Promise.resolve([]),
    guestMemory(qmp).catch(() => undefined),
  ]);
  const vmem = devices.find((d) => d.id === VMEM_ID);
  const balloonMiB = Math.round(balloon.actual / MiB);
  const virtioMemMiB = Math.round((vmem?.size ?? 0) / MiB);
  const snap: MemorySnapshot = { balloonMiB, virtioMemMiB, actualMiB: balloonMiB + virtioMemMiB };
  if (guest) snap.guest = guest;
  return snap;
}

export interface SetMemoryOptions {
  /** Headroom above what the guest uses that a shrink must leave (a guest squeezed below its needs panics). */
  marginMiB: number;
  /** How long to wait for the guest's first balloon statistics before refusing to shrink blind. */
  statsTimeoutMs: number;
  /** Host memory available for growth. */
  hostAvailableMiB: () => Promise<number>;
  /** How long the guest may take to reach the new size; past it the change is reported as not reached. */
  settleTimeoutMs: number;
}

/**
 * Moves the guest to `targetMiB`: the balloon below boot memory, virtio-mem above it. Refuses, before
 * touching anything, a target above maxMemoryMiB, one the host cannot back, or one below what the guest uses.
 */
export async function setGuestMemory(
  qmp: QmpClient,
  spec: DriverVmSpec,
  targetMiB: number,
  opts: SetMemoryOptions,
): Promise<MemorySnapshot> {
  if (!Number.isFinite(targetMiB) || targetMiB <= 0) {
    throw new DriverError('UNSUPPORTED', `${spec.id}: ${targetMiB} MiB is not a memory size`);
  }
  const ceilingMiB = spec.memoryMiB + (hasVirtioMem(spec) ? virtioMemSizeMiB(spec) : 0);
  if (targetMiB > ceilingMiB) {
    throw new DriverError('UNSUPPORTED', `${spec.id}: ${targetMiB} MiB is above its maximum of ${ceilingMiB} MiB`);
  }
  const blockMiB = VMEM_BLOCK_BYTES / MiB;
  // virtio-mem plugs whole blocks: any other size above boot memory could never be reached exactly.
  if (targetMiB > spec.memoryMiB && (targetMiB - spec.memoryMiB) % blockMiB !== 0) {
    throw new DriverError('UNSUPPORTED', `${spec.id}: above its boot memory of ${spec.memoryMiB} MiB, memory grows in steps of ${blockMiB} MiB`);
  }
  const now = await memorySnapshot(qmp, spec);
  if (targetMiB < now.actualMiB) {
    const guest = now.guest ?? (await waitForStats(qmp, opts.statsTimeoutMs));
    if (!guest) {
      throw new DriverError('INSUFFICIENT_MEMORY', `${spec.id}: the guest reports no memory statistics; refusing to shrink it blind`);
    }
    // What may go is what the guest has available beyond the margin; firmware and kernel reservations are
    // part of the balloon's size but never of the guest's available memory, so reckon from availability.
    const floorMiB = now.actualMiB - guest.availableMiB + opts.marginMiB;
    if (targetMiB < floorMiB) {
      throw new DriverError(
        'INSUFFICIENT_MEMORY',
        `${spec.id}: the guest uses ${guest.usedMiB} MiB with ${guest.availableMiB} MiB available; refusing to go below ${floorMiB} MiB`,
      );
    }
  } else if (targetMiB > now.actualMiB) {
    const growMiB = targetMiB - now.actualMiB;
    const hostMiB = await opts.hostAvailableMiB();
    if (growMiB > hostMiB) {
      throw new DriverError('INSUFFICIENT_MEMORY', `${spec.id} would grow by ${growMiB} MiB; the host has ${hostMiB} MiB available`);
    }
  }
  const balloonMiB = Math.min(targetMiB, spec.memoryMiB);
  const vmemMiB = Math.max(0, targetMiB - spec.memoryMiB);
  // Shrink the hot-plugged part first, so the guest never holds more than either the old or the new size.
  if (hasVirtioMem(spec) && vmemMiB !== now.virtioMemMiB) {
    await qmp.call('qom-set', { path: VMEM_ID, property: 'requested-size', value: vmemMiB * MiB });
  }
  if (balloonMiB !== now.balloonMiB || targetMiB <= spec.memoryMiB) {
    await qmp.call('balloon', { value: balloonMiB * MiB });
  }
  return waitForSize(qmp, spec, targetMiB, opts.settleTimeoutMs);
}

/**
 * The balloon and virtio-mem only ask: the guest gives pages back or onlines blocks at its own pace. The
 * change is done when QEMU reports the guest holding the new size, not when the request was sent.
 */
async function waitForSize(qmp: QmpClient, spec: DriverVmSpec, targetMiB: number, timeoutMs: number): Promise<MemorySnapshot> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await memorySnapshot(qmp, spec);
    if (now.actualMiB === targetMiB) return now;
    if (Date.now() > deadline) {
      throw new DriverError(
        'MEMORY_NOT_REACHED',
        `${spec.id}: the guest holds ${now.actualMiB} MiB, not the ${targetMiB} MiB asked, after ${timeoutMs} ms (balloon ${now.balloonMiB} MiB, virtio-mem ${now.virtioMemMiB} MiB)`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitForStats(qmp: QmpClient, timeoutMs: number): Promise<GuestMemory | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const guest = await guestMemory(qmp).catch(() => undefined);
    if (guest || Date.now() > deadline) return guest;
    await new Promise((r) => setTimeout(r, 200));
  }
}
