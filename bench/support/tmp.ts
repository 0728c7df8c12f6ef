// Temporary directories of a benchmark run, removed when they are done with and again when the process exits.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dirs = new Set<string>();
let hooked = false;

export function makeTempDir(prefix: string): string {
  if (!hooked) {
    // Ctrl-C and errors included: 'exit' runs for process.exit() and for a normal end alike.
    process.on('exit', () => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
    hooked = true;
  }
  const dir = mkdtempSync(join(tmpdir(), `awan-bench-${prefix}-`));
  dirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}
