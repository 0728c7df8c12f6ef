// Time for the simulator: a clock it reads and schedules on, plus a registry so close() can cancel every timer.

export interface SimClock {
  now(): number;
  /** Runs `fn` after `ms`; the returned function cancels it. */
  schedule(ms: number, fn: () => void): () => void;
}

export const realClock: SimClock = {
  now: () => Date.now(),
  schedule(ms, fn) {
    const handle = setTimeout(fn, ms);
    return () => clearTimeout(handle);
  },
};

/** Every timer the driver has pending, so that delete and close leave nothing behind. */
export class TimerSet {
  private readonly pending = new Set<() => void>();

  constructor(private readonly clock: SimClock) {}

  after(ms: number, fn: () => void): () => void {
    const cancelTimer = this.clock.schedule(ms, () => {
      this.pending.delete(cancel);
      fn();
    });
    const cancel = (): void => {
      if (this.pending.delete(cancel)) cancelTimer();
    };
    this.pending.add(cancel);
    return cancel;
  }

  cancelAll(): void {
    for (const cancel of [...this.pending]) cancel();
  }

  get size(): number {
    return this.pending.size;
  }
}
