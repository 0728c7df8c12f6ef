// Runs the benchmarks, one JSON line per figure: all of them, or those whose name contains a word given.
import { agentsHeartbeats } from './agents-heartbeats.ts';
import { apiVmCreates } from './api-vm-creates.ts';
import { haFailover } from './ha-failover.ts';
import { leaderFailover } from './leader-failover.ts';
import { memoryBudget } from './memory-budget.ts';
import { qemuCreateToRunning, qemuMigration } from './qemu.ts';
import { memoryRemote } from './memory-remote.ts';
import { haReplicaWrite } from './replica-write.ts';
import { schedulerPlacements } from './scheduler.ts';

const benches: { name: string; run: () => Promise<void> }[] = [
  { name: 'scheduler.placements', run: schedulerPlacements },
  { name: 'memory.budget', run: memoryBudget },
  { name: 'api.vm_creates', run: () => apiVmCreates('sqlite') },
  { name: 'api.vm_creates.postgres', run: () => apiVmCreates('postgres') },
  { name: 'agents.heartbeats', run: agentsHeartbeats },
  { name: 'control.leader_failover', run: leaderFailover },
  { name: 'qemu.create_to_running', run: qemuCreateToRunning },
  { name: 'qemu.migration', run: qemuMigration },
  // `npm run bench -- ha.failover` runs both: host deaths on a QEMU cluster, and a replicated disk's write rate.
  { name: 'ha.failover', run: haFailover },
  { name: 'ha.failover.replica_write', run: haReplicaWrite },
  // Attach latency, and one workload with enough RAM, with disk swap and with remote memory, in one run.
  { name: 'memory.remote', run: memoryRemote },
];

const words = process.argv.slice(2);
const selected = benches.filter((b) => words.length === 0 || words.some((w) => b.name.includes(w)));
if (selected.length === 0) {
  console.error(`no benchmark matches ${words.join(' ')}; known: ${benches.map((b) => b.name).join(', ')}`);
  process.exit(2);
}

// Ctrl-C: exit through process.exit so the temp-dir hook runs; helper processes end with their IPC channel.
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

let failed = false;
for (const b of selected) {
  try {
    await b.run();
  } catch (err) {
    failed = true;
    console.error(`${b.name} failed:`, err);
  }
}
process.exitCode = failed ? 1 : 0;
