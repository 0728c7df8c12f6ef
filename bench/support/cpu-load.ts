// Extra CPU load for a benchmark: one busy shell loop per core, bounded in time, ended by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus } from 'node:os';

export interface CpuLoad {
  procs: number;
  stop(): void;
}

/**
 * Starts `procs` busy loops (one per core by default). Each runs under `timeout`, so none outlives
 * `maxSeconds` even when this process dies without cleaning up; stop() ends them at once, by their pids.
 */
export function startCpuLoad(maxSeconds: number, procs = cpus().length): CpuLoad {
  const children: ChildProcess[] = [];
  for (let i = 0; i < procs; i++) {
    children.push(spawn('timeout', ['-s', 'KILL', String(Math.ceil(maxSeconds)), 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' }));
  }
  const stop = (): void => {
    // SIGTERM, not SIGKILL: `timeout` passes it on to its loop; killed outright it would leave the loop running.
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    process.off('exit', stop);
  };
  process.on('exit', stop);
  return { procs, stop };
}
