// The host's self-fencing, as its own process so that it works whatever happens to the agent (crashed,
// hung, cut off): every 100 ms it reads the lease the agent keeps renewing and, once it has run out, kills
// the QEMU of every HA VM of this host. It never touches anything else and never reboots the host.
// Usage: node --import tsx watchdog.ts <agent data dir>. It exits when no HA VM is left to guard.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { markFenced, monotonicMs, readLease, readPlacements, watchdogPidFile } from './state.ts';

const TICK_MS = 100;
/** With no live HA VM for this long, there is nothing to guard: exit. */
const IDLE_EXIT_MS = 10_000;

const dataDir = process.argv[2];
if (!dataDir) {
  console.error('usage: watchdog.ts <agent data dir>');
  process.exit(2);
}
writeFileSync(watchdogPidFile(dataDir), String(process.pid));

/** The pid in the file, if it still runs the VM's QEMU (a recycled pid is left alone). */
function qemuPid(pidFile: string, vmId: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(vmId) ? pid : undefined;
  } catch {
    return undefined;
  }
}

let idleSince = monotonicMs();
const timer = setInterval(() => {
  // Another watchdog took over, or the agent's data is gone: this one is not needed.
  const mine = existsSync(watchdogPidFile(dataDir)) && readFileSync(watchdogPidFile(dataDir), 'utf8').trim() === String(process.pid);
  if (!mine) return stop();
  const now = monotonicMs();
  const lease = readLease(dataDir);
  let live = 0;
  for (const [vmId, p] of Object.entries(readPlacements(dataDir))) {
    if (!p.ha || !p.pidFile) continue;
    const pid = qemuPid(p.pidFile, vmId);
    if (pid === undefined) continue;
    if (now <= lease) {
      live++;
      continue;
    }
    markFenced(dataDir, vmId, `the host's lease ran out ${now - lease} ms ago; stopped by the host's watchdog`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  if (live > 0) idleSince = now;
  else if (now - idleSince > IDLE_EXIT_MS) stop();
}, TICK_MS);

function stop(): void {
  clearInterval(timer);
  process.exit(0);
}
