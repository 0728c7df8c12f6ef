// A donor host's side of memory loans: RAM set aside and served over NBD for another host's VM to swap to.
// The tmpfs lender (QEMU hosts) and the simulated one (sim hosts) keep this contract.
import type { HypervisorDriver, RemoteMemoryTarget } from '../../drivers/types.ts';

export interface MemoryLoan {
  target: RemoteMemoryTarget;
  sizeMiB: number;
}

export interface MemoryLender {
  /** The loan served under `name` now, if any. */
  find(name: string): Promise<MemoryLoan | undefined>;
  /**
   * Sets aside `sizeMiB` and serves it on `address`; an existing loan of that name is answered as it is.
   * `mayAllocate` is asked (and may throw) before new RAM is set aside, not when a loan is served again.
   */
  export(name: string, sizeMiB: number, address: string, mayAllocate: (sizeMiB: number) => Promise<void>): Promise<MemoryLoan>;
  /** Stops serving and frees the RAM; an unknown name is already freed. */
  unexport(name: string): Promise<void>;
  /** What this host lends now, all loans together. */
  lentMiB(): Promise<number>;
  /** The host's free memory once loans are counted, from what the driver reports. */
  hostFreeMiB(driverFreeMiB: number): Promise<number>;
}

export class MemoryLoanError extends Error {
  constructor(
    readonly code: 'DONOR_RESERVE' | 'MEMORY_EXPORT_FAILED',
    message: string,
  ) {
    super(message);
    this.name = 'MemoryLoanError';
  }
}

/** Export names are plain (the protocol's pattern); a volume-like name's slashes become dashes. */
export const exportNameOf = (name: string) => `rmem-${name.replaceAll('/', '-')}`;

/** What a host keeps for itself unless told otherwise: a donor never lends below it. */
export const DEFAULT_MEMORY_RESERVE_MIB = 256;

/** memoryExport: refuses new RAM that would leave the host under its reserve; a loan made already is served again. */
export async function lendMemory(
  lender: MemoryLender,
  driver: HypervisorDriver,
  req: { name: string; sizeMiB: number; address: string; reserveMiB: number },
): Promise<MemoryLoan> {
  return lender.export(req.name, req.sizeMiB, req.address, async (sizeMiB) => {
    const freeMiB = await lender.hostFreeMiB((await driver.facts()).memoryFreeMiB);
    if (freeMiB - sizeMiB < req.reserveMiB) {
      throw new MemoryLoanError(
        'DONOR_RESERVE',
        `lending ${sizeMiB} MiB would leave ${freeMiB - sizeMiB} MiB available, under this host's reserve of ${req.reserveMiB} MiB`,
      );
    }
  });
}
