// Finds the test guest built by scripts/build-guest, building it first when it is missing.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const repo = join(import.meta.dirname, '..', '..');

export async function ensureGuest(): Promise<{ kernel: string; initrd: string; cmdline: string }> {
  const dir = process.env.AWAN_GUEST_DIR ?? join(repo, '.cache', 'guest');
  const file = join(dir, 'guest.json');
  if (!existsSync(file)) execFileSync('bash', [join(repo, 'scripts', 'build-guest')], { stdio: 'inherit' });
  const g = JSON.parse(readFileSync(file, 'utf8')) as { kernelPath: string; initrdPath: string; cmdline: string };
  return { kernel: g.kernelPath, initrd: g.initrdPath, cmdline: g.cmdline };
}
