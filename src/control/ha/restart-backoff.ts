// How long HA waits between restarts of one VM: nothing before the first, then a delay that doubles with
// each restart within the window (10 s, 20 s, 40 s … up to a cap), so a VM that brings its hosts down, or
// a pair of hosts that take turns failing, is not restarted in a tight loop.

export interface RestartBackoff {
  /** The wait before the second restart; each later one waits twice the one before. 0: no wait. */
  baseMs: number;
  maxMs: number;
}

export const defaultRestartBackoff: RestartBackoff = { baseMs: 10_000, maxMs: 300_000 };

export function checkRestartBackoff(b: RestartBackoff): RestartBackoff {
  for (const [k, v] of Object.entries(b)) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`HA restart backoff ${k} must be a whole number ≥ 0, not ${v}`);
  }
  if (b.maxMs < b.baseMs) throw new Error(`the HA restart backoff cap (${b.maxMs} ms) is below its first delay (${b.baseMs} ms)`);
  return b;
}

/** The wait after the `restarts`-th restart before the next one (restarts ≥ 1). */
export function delayAfter(restarts: number, b: RestartBackoff): number {
  if (restarts <= 0 || b.baseMs === 0) return 0;
  return Math.min(b.maxMs, b.baseMs * 2 ** Math.min(restarts - 1, 30));
}

/** When the next restart may happen, given the times (ms) of the restarts within the window; ≤ now means at once. */
export function nextRestartAtMs(recent: number[], b: RestartBackoff): number {
  if (recent.length === 0) return 0;
  return Math.max(...recent) + delayAfter(recent.length, b);
}
