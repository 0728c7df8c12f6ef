// Picks the hypervisor driver for a host: the simulator, or QEMU loaded only when asked for.
import { createSimDriver, type SimDriver, type SimDriverOptions } from './sim/index.ts';
import { DriverError, type HypervisorDriver } from './types.ts';

export type DriverKind = HypervisorDriver['kind'];

export function createDriver(kind: 'sim', opts: SimDriverOptions): Promise<SimDriver>;
/** The QEMU driver's options belong to that driver; they are passed through unchecked here. */
export function createDriver(kind: 'qemu', opts: unknown): Promise<HypervisorDriver>;
export function createDriver(kind: DriverKind, opts: unknown): Promise<HypervisorDriver>;
export async function createDriver(kind: DriverKind, opts: unknown): Promise<HypervisorDriver> {
  if (kind === 'sim') return createSimDriver(opts as SimDriverOptions);
  if (kind === 'qemu') return createQemu(opts);
  throw new DriverError('UNSUPPORTED', `unknown driver kind ${String(kind)}`);
}

async function createQemu(opts: unknown): Promise<HypervisorDriver> {
  // Loaded lazily so that hosts and tests using the simulator never load QEMU code; the path is widened to
  // string so typechecking does not depend on that module's exports.
  let mod: unknown;
  try {
    mod = await import('./qemu/index.ts' as string);
  } catch (err) {
    throw new DriverError('UNSUPPORTED', `cannot load the qemu driver: ${err instanceof Error ? err.message : String(err)}`);
  }
  const factory = (mod as { createQemuDriver?: unknown }).createQemuDriver;
  if (typeof factory !== 'function') {
    throw new DriverError('UNSUPPORTED', 'the qemu driver module does not export createQemuDriver');
  }
  const driver: unknown = await (factory as (opts: unknown) => unknown)(opts);
  if (!isDriver(driver)) throw new DriverError('INTERNAL', 'createQemuDriver did not return a qemu driver');
  return driver;
}

function isDriver(value: unknown): value is HypervisorDriver {
  return typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'qemu';
}
