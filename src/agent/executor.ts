// Runs one command from control against the driver and turns the outcome into a result message.
import { isAbsolute, relative } from 'node:path';
import { DriverError, type HypervisorDriver } from '../drivers/types.ts';
import { StaleToken } from './fence/keeper.ts';
import type { Command } from '../protocol/messages.ts';
import type { HostStorage } from './storage/index.ts';
import { PoolError } from './storage/pool.ts';
import { DEFAULT_MEMORY_RESERVE_MIB, MemoryLoanError, lendMemory } from './memory/lender.ts';

export interface ExecuteContext {
  driver: HypervisorDriver;
  /** VMs whose console output is streamed to control. */
  consoles: Set<string>;
  signal: AbortSignal;
  progress: (fraction: number, message?: string) => void;
  storage: HostStorage;
  /** The host's address, where its NBD exports listen unless a command says otherwise. */
  address: () => Promise<string>;
  /** Memory this host never lends (memoryExport refuses below it); DEFAULT_MEMORY_RESERVE_MIB unless told. */
  memoryReserveMiB?: number;
}

export async function execute(cmd: Command, { driver, consoles, signal, progress, storage, address, memoryReserveMiB = DEFAULT_MEMORY_RESERVE_MIB }: ExecuteContext): Promise<unknown> {
  switch (cmd.op) {
    case 'start':
      // A disk this host served as another's replica becomes the VM's own: the export lets go of it first
      // (it holds the image's write lock, and no one else may write it while the VM runs on it).
      for (const d of cmd.spec.disks) if (d.local) await storage.local.unexport(d.path);
      return driver.start(cmd.spec, signal);
    case 'stop':
      return driver.stop(cmd.vmId, { force: cmd.force, timeoutMs: cmd.timeoutMs });
    case 'reboot':
      return driver.reboot(cmd.vmId);
    case 'delete':
      return driver.delete(cmd.vmId);
    case 'setMemory':
      return driver.setMemory(cmd.vmId, cmd.targetMiB);
    case 'prepareIncoming':
      return driver.prepareIncoming(cmd.spec);
    case 'migrate':
      return driver.migrate(cmd.vmId, { uri: cmd.uri, ...(cmd.nbd ? { nbd: cmd.nbd } : {}), ...(cmd.viaReplica ? { viaReplica: true } : {}) }, (p) => progress(p.fraction, `${p.transferredMiB} MiB sent, ${p.remainingMiB} MiB left`), signal);
    case 'completeIncoming':
      // Copies this host served for the VM become its disks: their servers let go before the guest runs.
      return driver.completeIncoming(cmd.vmId, cmd.timeoutMs, async (disks) => {
        for (const d of disks) await storage.local.unexport(isAbsolute(d.path) ? relative(storage.local.path, d.path) : d.path);
      });
    case 'abortIncoming':
      return driver.abortIncoming(cmd.vmId);
    case 'consoleWrite':
      return driver.consoleWrite(cmd.vmId, cmd.data);
    case 'consoleHistory':
      return driver.consoleHistory(cmd.vmId);
    case 'growDisk':
      return driver.growDisk(cmd.vmId, cmd.index, cmd.sizeMiB);
    case 'consoleAttach':
      await driver.status(cmd.vmId); // refuses an unknown VM
      consoles.add(cmd.vmId);
      return driver.consoleHistory(cmd.vmId);
    case 'consoleDetach':
      consoles.delete(cmd.vmId);
      return;
    case 'volumeCreate': {
      const pool = storage.open(cmd.pool);
      const volume = await pool.create({ name: cmd.name, format: cmd.format, sizeMiB: cmd.sizeMiB, ...(cmd.backing ? { backing: cmd.backing } : {}) });
      return { volume, pool: await pool.stats() };
    }
    case 'volumeGrow': {
      const pool = storage.open(cmd.pool);
      return { volume: await pool.grow(cmd.name, cmd.sizeMiB), pool: await pool.stats() };
    }
    case 'volumeDelete': {
      const pool = storage.open(cmd.pool);
      await pool.delete(cmd.name);
      return { pool: await pool.stats() };
    }
    case 'volumeExport':
      return storage.open(cmd.pool).export(cmd.name, cmd.address ?? (await address()));
    case 'volumeUnexport':
      return storage.open(cmd.pool).unexport(cmd.name);
    case 'replicaExport':
      return serveReplica(storage, cmd, cmd.address ?? (await address()));
    case 'replicaUnexport': {
      const pool = storage.open(cmd.pool);
      if (cmd.delete) await pool.delete(cmd.name);
      else await pool.unexport(cmd.name);
      return { pool: await pool.stats() };
    }
    case 'replicaAttach':
      return driver.attachReplica(cmd.vmId, cmd.disk, cmd.target);
    case 'replicaDetach':
      return driver.detachReplica(cmd.vmId, cmd.disk);
    case 'memoryExport':
      return lendMemory(storage.memory, driver, { name: cmd.name, sizeMiB: cmd.sizeMiB, address: cmd.address ?? (await address()), reserveMiB: memoryReserveMiB });
    case 'memoryUnexport':
      return storage.memory.unexport(cmd.name);
    case 'remoteMemoryAttach':
      return driver.attachRemoteMemory(cmd.vmId, cmd.slot, cmd.target, cmd.sizeMiB);
    case 'remoteMemoryDetach':
      return driver.detachRemoteMemory(cmd.vmId, cmd.slot);
    case 'cancel':
      throw new DriverError('INTERNAL', 'cancel is handled by the agent, not the driver');
  }
}

/**
 * The replica image must be exactly the primary's size (a mirror cannot resize an NBD target); an existing
 * one is kept and served again, its old content is overwritten by the mirror's full copy.
 */
async function serveReplica(storage: HostStorage, cmd: Extract<Command, { op: 'replicaExport' }>, address: string) {
  const pool = storage.open(cmd.pool);
  const volume = await pool.create({ name: cmd.name, format: cmd.format, sizeMiB: cmd.sizeMiB });
  if (volume.sizeMiB !== cmd.sizeMiB) {
    throw new PoolError('VOLUME_INVALID', `replica ${cmd.name} is ${volume.sizeMiB} MiB, the primary's volume ${cmd.sizeMiB} MiB`);
  }
  // Writethrough: a write the guest saw complete is on the replica host's disk, not only in its memory.
  const served = await pool.export(cmd.name, address, { writethrough: true });
  const colon = served.nbd.lastIndexOf(':');
  const replica = { host: served.nbd.slice(0, colon), port: Number(served.nbd.slice(colon + 1)), exportName: served.exportName };
  return { replica, volume, pool: await pool.stats() };
}

export function errorOf(err: unknown): { code: string; message: string } {
  if (err instanceof DriverError || err instanceof PoolError || err instanceof StaleToken || err instanceof MemoryLoanError) return { code: err.code, message: err.message };
  return { code: 'AGENT_ERROR', message: err instanceof Error ? err.message : String(err) };
}
