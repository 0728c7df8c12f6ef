// The subscribers of a driver's events, shared by every driver.
import type { DriverEvent } from './types.ts';

export class DriverListeners {
  private readonly set = new Set<(event: DriverEvent) => void>();

  add(listener: (event: DriverEvent) => void): () => void {
    this.set.add(listener);
    return () => {
      this.set.delete(listener);
    };
  }

  emit(event: DriverEvent): void {
    for (const listener of [...this.set]) {
      try {
        listener(event);
      } catch {
        // A broken subscriber must not break the VM lifecycle or starve the others.
      }
    }
  }

  clear(): void {
    this.set.clear();
  }
}
