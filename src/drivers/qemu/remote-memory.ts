// Remote memory in one QEMU guest: a donor's NBD export hot-plugged as a virtio-blk disk (QMP) that the guest
// swaps to (commands through its guest agent), and taken back in the safe order: swapoff, unplug, then drop.
import { DriverError, type RemoteMemoryTarget } from '../types.ts';
import type { GuestAgent } from './guest-agent.ts';
import type { QmpClient } from './qmp.ts';

export const remoteMemoryDevice = (slot: number) => `rmem${slot}`;
export const remoteMemoryNode = (slot: number) => `rmem${slot}-nbd`;
/** The disk's serial: how the guest tells the slot's disk from its others (/sys/block/vdX/serial). */
export const remoteMemorySerial = (slot: number) => `awan-rmem${slot}`;

const DEVICE_DELETED_TIMEOUT_MS = 30_000;
/** Remote memory is tried before any local swap disk the guest has. */
const SWAP_PRIORITY = 100;

/** Shell that sets `dev` to the guest's disk with the slot's serial, waiting up to `waitS` for it to appear. */
const findDisk = (slot: number, waitS: number) => `serial=${remoteMemorySerial(slot)}; dev=; i=0
while :; do
  for b in /sys/block/vd*; do [ "$(cat "$b/serial" 2>/dev/null)" = "$serial" ] && dev="/dev/\${b##*/}"; done
  [ -n "$dev" ] && [ -b "$dev" ] && break
  [ $i -ge ${waitS * 10} ] && break
  i=$((i + 1)); sleep 0.1
done`;

/**
 * Swapon of the slot's disk once the guest sees it. The donor writes the swap signature in advance (no
 * mkswap over the network on the first plug); an image without one gets it here.
 */
export const swaponScript = (slot: number) => `${findDisk(slot, 20)}
[ -n "$dev" ] || { echo "no disk with serial $serial appeared" >&2; exit 3; }
grep -q "^$dev " /proc/swaps && { echo "$dev"; exit 0; }
[ "$(dd if="$dev" bs=1 skip=4086 count=10 2>/dev/null)" = SWAPSPACE2 ] || mkswap -L awan-rmem "$dev" >/dev/null || exit 4
# Guests whose swapon has no -p (busybox) get the kernel's default priority.
swapon -p ${SWAP_PRIORITY} "$dev" 2>/dev/null || swapon "$dev" || exit 5
echo "$dev"`;

/** Swapoff of the slot's disk: its pages come back into the guest's RAM (or other swap) first. */
export const swapoffScript = (slot: number) => `${findDisk(slot, 0)}
[ -n "$dev" ] || exit 0
grep -q "^$dev " /proc/swaps || exit 0
swapoff "$dev"`;

export async function runInGuest(agent: GuestAgent, what: string, script: string, timeoutMs: number): Promise<string> {
  let r;
  try {
    r = await agent.exec(script, timeoutMs);
  } catch (err) {
    throw new DriverError('REMOTE_MEMORY_FAILED', `${what}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (r.exitCode !== 0) throw new DriverError('REMOTE_MEMORY_FAILED', `${what}: exit ${r.exitCode}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
  return r.stdout.trim();
}

/** blockdev-add of the export, then device_add of a disk on it; a half-done plug is undone. */
export async function plug(qmp: QmpClient, slot: number, target: RemoteMemoryTarget, reconnectDelayS: number): Promise<void> {
  try {
    await qmp.call('blockdev-add', {
      driver: 'nbd', 'node-name': remoteMemoryNode(slot),
      server: { type: 'inet', host: target.host, port: String(target.port) },
      export: target.exportName,
      // Requests to a donor that went away wait this long for it to come back instead of hanging the guest
      // for good (FACTS.md: without it a killed donor hangs the guest).
      'reconnect-delay': reconnectDelayS,
    });
  } catch (err) {
    throw new DriverError('REMOTE_MEMORY_FAILED', `connecting to ${target.host}:${target.port}/${target.exportName}: ${String(err)}`);
  }
  try {
    await qmp.call('device_add', {
      driver: 'virtio-blk-pci', id: remoteMemoryDevice(slot), drive: remoteMemoryNode(slot), serial: remoteMemorySerial(slot),
    });
  } catch (err) {
    await qmp.call('blockdev-del', { 'node-name': remoteMemoryNode(slot) }).catch(() => undefined);
    throw new DriverError('REMOTE_MEMORY_FAILED', `plugging remote memory slot ${slot}: ${String(err)}`);
  }
}

/** Whether the slot's disk is plugged in QEMU now. */
export async function isPlugged(qmp: QmpClient, slot: number): Promise<boolean> {
  return qmp.call('qom-get', { path: `/machine/peripheral/${remoteMemoryDevice(slot)}`, property: 'type' }).then(() => true, () => false);
}

/**
 * Unplugs the disk (the guest must no longer swap to it): device_del, the DEVICE_DELETED event that says the
 * guest let go of it, then blockdev-del. What is already gone is skipped.
 */
export async function unplug(qmp: QmpClient, slot: number): Promise<void> {
  const id = remoteMemoryDevice(slot);
  if (await isPlugged(qmp, slot)) {
    let off = () => {};
    const deleted = new Promise<void>((resolve) => {
      off = qmp.on('DEVICE_DELETED', (e) => {
        if (e.data.device === id) resolve();
      });
    });
    try {
      await qmp.call('device_del', { id });
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(r, DEVICE_DELETED_TIMEOUT_MS, 'timeout')));
      const outcome = await Promise.race([deleted, timedOut]);
      clearTimeout(timer);
      if (outcome === 'timeout' && (await isPlugged(qmp, slot))) {
        throw new DriverError('REMOTE_MEMORY_FAILED', `the guest did not release remote memory slot ${slot} within ${DEVICE_DELETED_TIMEOUT_MS} ms`);
      }
    } finally {
      off();
    }
  }
  // An absent node is fine: the plug failed before it, or an earlier unplug got this far.
  await qmp.call('blockdev-del', { 'node-name': remoteMemoryNode(slot) }).catch(() => undefined);
}

export interface GuestSwap {
  swapTotalMiB: number;
  swapUsedMiB: number;
}

export async function guestSwap(agent: GuestAgent, timeoutMs: number): Promise<GuestSwap | undefined> {
  const r = await agent.exec("awk '/^SwapTotal:/{t=$2} /^SwapFree:/{f=$2} END {print t, f}' /proc/meminfo", timeoutMs, { ifIdle: true }).catch(() => undefined);
  const m = r && r.exitCode === 0 ? /^(\d+) (\d+)/.exec(r.stdout.trim()) : null;
  if (!m) return undefined;
  const totalKiB = Number(m[1]);
  return { swapTotalMiB: Math.round(totalKiB / 1024), swapUsedMiB: Math.round((totalKiB - Number(m[2])) / 1024) };
}
