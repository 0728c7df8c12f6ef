// Prints one figure as one JSON line: name, value, unit, then the parameters it was measured with.
export function report(bench: string, value: number, unit: string, params: Record<string, unknown> = {}): void {
  const rounded = Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 100) / 100;
  console.log(JSON.stringify({ bench, value: rounded, unit, ...params }));
}

/** The q-quantile (0..1) of some samples, in their unit; 0 when there are none. */
export function quantile(samples: number[], q: number): number {
  if (samples.length === 0) return 0;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
