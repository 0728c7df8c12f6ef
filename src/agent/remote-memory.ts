// The remote memory commands (memory leases): a donor serves RAM, a borrower plugs it into a VM as swap.
// They run through the driver's optional remote memory side; a driver without one refuses them.
import { DriverError, type HypervisorDriver, type RemoteMemoryDriver } from '../drivers/types.ts';
import type { Command } from '../protocol/messages.ts';

export type RemoteMemoryCommand = Extract<Command, { op: 'memoryExport' | 'memoryUnexport' | 'remoteMemoryAttach' | 'remoteMemoryDetach' }>;

export const isRemoteMemoryCommand = (cmd: Command): cmd is RemoteMemoryCommand =>
  cmd.op === 'memoryExport' || cmd.op === 'memoryUnexport' || cmd.op === 'remoteMemoryAttach' || cmd.op === 'remoteMemoryDetach';

function remoteSide(driver: HypervisorDriver): RemoteMemoryDriver {
  if (!driver.remoteMemory) throw new DriverError('UNSUPPORTED', `the ${driver.kind} driver of this host cannot lend or borrow memory`);
  return driver.remoteMemory;
}

export function executeRemoteMemory(cmd: RemoteMemoryCommand, driver: HypervisorDriver): Promise<unknown> {
  const side = remoteSide(driver);
  switch (cmd.op) {
    case 'memoryExport':
      return side.exportMemory(cmd.name, cmd.sizeMiB);
    case 'memoryUnexport':
      return side.unexportMemory(cmd.name);
    case 'remoteMemoryAttach':
      return side.attachRemoteMemory(cmd.vmId, cmd.slot, cmd.target, cmd.sizeMiB);
    case 'remoteMemoryDetach':
      return side.detachRemoteMemory(cmd.vmId, cmd.slot);
  }
}
