// Finds the test guest built by scripts/build-guest, building it first when it is missing.
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

const repo = join(import.meta.dirname, '..', '..');

export interface TestGuest {
  kernel: string;
  initrd: string;
  cmdline: string;
}

export interface EnsureGuestOptions {
  /** Where the guest is kept; AWAN_GUEST_DIR, else the repository's cache. */
  dir?: string;
  /** The script that builds it (scripts/build-guest); it receives the directory as AWAN_GUEST_DIR. */
  buildScript?: string;
  /** `inherit` shows the build's progress on this terminal. */
  stdio?: 'inherit' | 'ignore';
}

/**
 * The build takes a while (apt-get download, dpkg-deb, cpio): it runs as a child process this one waits for
 * without blocking, so that agents and control sharing the process keep their heartbeats going meanwhile.
 */
export async function ensureGuest(o: EnsureGuestOptions = {}): Promise<TestGuest> {
  const dir = o.dir ?? process.env.AWAN_GUEST_DIR ?? join(repo, '.cache', 'guest');
  const file = join(dir, 'guest.json');
  let raw = await readFile(file, 'utf8').catch(() => undefined);
  if (raw === undefined) {
    await run('bash', [o.buildScript ?? join(repo, 'scripts', 'build-guest')], { ...process.env, AWAN_GUEST_DIR: dir }, o.stdio ?? 'inherit');
    raw = await readFile(file, 'utf8');
  }
  const g: unknown = JSON.parse(raw);
  const r = (typeof g === 'object' && g !== null ? g : {}) as Record<string, unknown>;
  if (typeof r.kernelPath !== 'string' || typeof r.initrdPath !== 'string' || typeof r.cmdline !== 'string') {
    throw new Error(`${file} lacks kernelPath/initrdPath/cmdline: rebuild it with \`npm run build-guest -- --force\``);
  }
  return { kernel: r.kernelPath, initrd: r.initrdPath, cmdline: r.cmdline };
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, stdio: 'inherit' | 'ignore'): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', stdio, stdio] });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`building the test guest failed (${signal ? `signal ${signal}` : `exit code ${String(code)}`}): see the output above, or run \`npm run build-guest\``));
    });
  });
}
