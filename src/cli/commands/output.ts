// How results look: aligned tables, key/value blocks, human units, and raw JSON for --json.

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Columns padded to their widest cell; the last column is not padded so lines carry no trailing blanks. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function printTable(headers: string[], rows: string[][], empty = 'nothing to show'): void {
  process.stdout.write(`${rows.length === 0 ? empty : table(headers, rows)}\n`);
}

/** `key: value` lines with the values aligned, for `show` commands. */
export function printFields(fields: [string, string][]): void {
  const width = Math.max(...fields.map(([k]) => k.length)) + 1;
  process.stdout.write(`${fields.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`).join('\n')}\n`);
}

/** 512 → "512 MiB", 16384 → "16 GiB", 1536 → "1.5 GiB". */
export function mib(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  if (Math.abs(n) < 1024) return `${n} MiB`;
  const gib = n / 1024;
  if (Math.abs(gib) < 1024) return `${trim(gib)} GiB`;
  return `${trim(gib / 1024)} TiB`;
}

const trim = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1).replace(/\.0$/, ''));

/** An ISO time as "3s ago", "5m ago", "2h ago", "4d ago"; "-" when absent. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(s)) return iso;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

export const orDash = (v: string | number | null | undefined) => (v === null || v === undefined || v === '' ? '-' : String(v));

export const yesNo = (b: boolean) => (b ? 'yes' : 'no');

export const labels = (l: Record<string, string>) => Object.entries(l).map(([k, v]) => `${k}=${v}`).join(',') || '-';
