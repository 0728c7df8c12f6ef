// The simulator's memory loans: sizes in a map and made-up NBD addresses; lent memory counts as used.
import { type MemoryLender, type MemoryLoan, exportNameOf } from './lender.ts';

export function createSimLender(): MemoryLender {
  const loans = new Map<string, MemoryLoan>();
  let nextPort = 30_000;
  const lent = () => [...loans.values()].reduce((n, l) => n + l.sizeMiB, 0);
  return {
    async find(name) {
      return loans.get(name);
    },
    async export(name, sizeMiB, address, mayAllocate) {
      let loan = loans.get(name);
      if (loan) return loan;
      await mayAllocate(sizeMiB);
      loans.set(name, (loan = { target: { host: address, port: nextPort++, exportName: exportNameOf(name) }, sizeMiB }));
      return loan;
    },
    async unexport(name) {
      loans.delete(name);
    },
    async lentMiB() {
      return lent();
    },
    // A simulated host's free memory knows nothing of loans: take them off here, as tmpfs does on a real host.
    async hostFreeMiB(driverFreeMiB) {
      return Math.max(0, driverFreeMiB - lent());
    },
  };
}
