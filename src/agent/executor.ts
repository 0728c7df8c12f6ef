// Runs one command from control against the driver and turns the outcome into a result message.
import { DriverError, type HypervisorDriver } from '../drivers/types.ts';
import type { Command } from '../protocol/messages.ts';

export interface ExecuteContext {
  driver: HypervisorDriver;
  /** VMs whose console output is streamed to control. */
  consoles: Set<string>;
  signal: AbortSignal;
  progress: (fraction: number, message?: string) => void;
}

export async function execute(cmd: Command, { driver, consoles, signal, progress }: ExecuteContext): Promise<unknown> {
  switch (cmd.op) {
    case 'start':
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
      return driver.migrate(cmd.vmId, { uri: cmd.uri, ...(cmd.nbd ? { nbd: cmd.nbd } : {}) }, (p) => progress(p.fraction, `${p.transferredMiB} MiB sent, ${p.remainingMiB} MiB left`), signal);
    case 'completeIncoming':
      return driver.completeIncoming(cmd.vmId, cmd.timeoutMs);
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
    case 'cancel':
      throw new DriverError('INTERNAL', 'cancel is handled by the agent, not the driver');
  }
}

export function errorOf(err: unknown): { code: string; message: string } {
  if (err instanceof DriverError) return { code: err.code, message: err.message };
  return { code: 'AGENT_ERROR', message: err instanceof Error ? err.message : String(err) };
}
