// Finds and ends processes by what their command line names (a test's own data directory), so a test
// cleans up the QEMU processes it caused even when it fails half-way.
import { createServer } from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';

/** Pids whose command line contains `text` (and `also`, when given), this process excepted. */
export function pidsMentioning(text: string, also?: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes(text) && (also === undefined || cmdline.includes(also))) pids.push(Number(entry));
    } catch {
      // the process ended meanwhile
    }
  }
  return pids;
}

/** SIGKILLs those processes by pid; returns the pids it signalled. */
export function killMentioning(text: string, also?: string): number[] {
  const killed: number[] = [];
  for (const pid of pidsMentioning(text, also)) {
    try {
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    } catch {
      // already gone
    }
  }
  return killed;
}

/** A TCP port free on loopback right now, for a child process to listen on. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}
