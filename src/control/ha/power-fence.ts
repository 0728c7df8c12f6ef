// Power fencing: a failed host whose spec names a power-off command (IPMI, a PDU, a cloud API) is switched
// off before HA restarts its VMs, so they need not wait for the lease margin. The command runs once per
// failure, on the leader (the controllers run there), without a shell, with a timeout; its outcome is an
// event, and a success is in the host's status (a new leader does not run it again). A failure or a timeout only means HA waits as it would without one: self-fencing still holds.
import { spawn } from 'node:child_process';
import type { Logger } from '../../lib/logger.ts';
import type { EventService } from '../features/events/service.ts';
import { type PowerFence, powerFenceOf } from '../features/hosts/model.ts';
import type { ChangeFeed } from '../reconcile/changes.ts';
import type { HostRow } from '../store/schema.ts';

export interface FenceOutcome {
  ok: boolean;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** The last lines the command wrote to stderr (or why it could not run). */
  stderrTail: string;
  durationMs: number;
}

const TAIL_CHARS = 2000;

/**
 * Runs the command with the host in its environment. spawn rather than execFile: the command gets its own
 * process group, so a timeout kills what it started too (a script's `sleep` would keep execFile waiting).
 */
export function runPowerFence(fence: PowerFence, host: Pick<HostRow, 'id' | 'name' | 'address'>, signal: AbortSignal): Promise<FenceOutcome> {
  const started = Date.now();
  return new Promise((resolve) => {
    let stderr = '';
    let timedOut = false;
    let settled = false;
    const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', AWAN_HOST_ID: host.id, AWAN_HOST_NAME: host.name, AWAN_HOST_ADDRESS: host.address };
    const child = spawn(fence.command[0], fence.command.slice(1), { env, shell: false, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, fence.timeoutS * 1000);
    const onAbort = () => killGroup();
    signal.addEventListener('abort', onAbort, { once: true });
    const settle = (exitCode: number | null, sig: string | null, extra = '') => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      child.stderr?.destroy();
      const tail = (stderr + extra).slice(-TAIL_CHARS);
      resolve({ ok: exitCode === 0 && !timedOut, exitCode, signal: sig, timedOut, stderrTail: tail, durationMs: Date.now() - started });
    };
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString('utf8')).slice(-TAIL_CHARS);
    });
    child.on('error', (err) => settle(null, null, `could not run ${fence.command[0]}: ${err.message}`));
    child.on('exit', (code, sig) => settle(code, sig));
  });
}

export type FenceState = 'none' | 'running' | 'off' | 'failed';

/** Remembers, per host, the power fence of its current failure (`failed_at`), and starts it when first asked. */
export class PowerFencer {
  private readonly runs = new Map<string, { failedAt: string; state: FenceState }>();
  private abort = new AbortController();

  constructor(private readonly deps: {
    events: EventService; changes: ChangeFeed; log: Logger;
    /** Records in the host's status that it is off for this failure (survives a change of leader). */
    poweredOff: (hostId: string, failedAt: string) => Promise<void>;
  }) {}

  /** Where the power fence of this failure stands; `none` when the host has no power fence. */
  state(row: HostRow): FenceState {
    const fence = powerFenceOf(row);
    if (!fence || !row.failed_at) return 'none';
    if (row.power_fenced_for === row.failed_at) return 'off';
    const run = this.runs.get(row.id);
    if (run?.failedAt === row.failed_at) return run.state;
    this.runs.set(row.id, { failedAt: row.failed_at, state: 'running' });
    void this.run(row, fence, row.failed_at);
    return 'running';
  }

  /** Kills commands under way (this process no longer leads, or shuts down); a new leadership starts afresh. */
  stop(): void {
    this.abort.abort();
    this.abort = new AbortController();
    this.runs.clear();
  }

  private async run(row: HostRow, fence: PowerFence, failedAt: string): Promise<void> {
    const { events, changes, log } = this.deps;
    log.warn({ hostId: row.id, host: row.name, program: fence.command[0] }, 'powering a failed host off');
    const { signal } = this.abort;
    const out = await runPowerFence(fence, row, signal);
    if (signal.aborted) return;
    const run = this.runs.get(row.id);
    if (run?.failedAt === failedAt) run.state = out.ok ? 'off' : 'failed';
    if (out.ok) await this.deps.poweredOff(row.id, failedAt).catch((err: unknown) => log.error({ err, hostId: row.id }, 'could not record a power fence'));
    const data = { program: fence.command[0], exitCode: out.exitCode, signal: out.signal, timedOut: out.timedOut, durationMs: out.durationMs, stderrTail: out.stderrTail };
    const why = out.timedOut ? `timed out after ${fence.timeoutS} s` : out.exitCode === null ? (out.signal ? `was killed by ${out.signal}` : 'could not run') : `exited with ${out.exitCode}`;
    const message = out.ok
      ? `host ${row.name} was powered off by ${fence.command[0]}; its HA VMs restart without waiting for the lease margin`
      : `powering host ${row.name} off failed: ${fence.command[0]} ${why}${out.stderrTail ? ` (${out.stderrTail.trim().split('\n').slice(-1)[0]})` : ''}; its HA VMs wait for the lease margin`;
    if (out.ok) log.warn({ hostId: row.id, durationMs: out.durationMs }, 'failed host powered off');
    else log.error({ hostId: row.id, ...data }, 'could not power a failed host off');
    await events.emit({ type: out.ok ? 'host.power-fenced' : 'host.power-fence-failed', objectKind: 'host', objectId: row.id, message, data })
      .catch((err: unknown) => log.error({ err, hostId: row.id }, 'could not record a power fence'));
    changes.publish({ kind: 'host', id: row.id });
  }
}
