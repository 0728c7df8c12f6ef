// Commands the VM controller sends without waiting: each gets an id recorded in the VM's status, and its
// outcome, when the agent answers, is kept here and queues the VM's next pass. A process that did not send
// a command (control restarted, another replica leads now) has no outcome for it and goes by what the
// hosts report instead.
import { newId } from '../../lib/ids.ts';
import type { Command } from '../../protocol/messages.ts';
import { CommandError } from '../features/agents/connection.ts';
import type { LiveHost } from '../features/hosts/registry.ts';

export type Outcome = { ok: true; value: unknown } | { ok: false; code: string; message: string };

/** Outcomes nobody came for are dropped after this long. */
const KEEP_MS = 15 * 60_000;

export type VmCommands = ReturnType<typeof createVmCommands>;

export function createVmCommands(onSettled: (vmId: string) => void) {
  const inflight = new Set<string>();
  const outcomes = new Map<string, { outcome: Outcome; at: number }>();

  const prune = () => {
    const old = Date.now() - KEEP_MS;
    for (const [id, o] of outcomes) if (o.at < old) outcomes.delete(id);
  };

  return {
    /** Sends a command about one VM and returns its id at once; the outcome arrives later. */
    send(vmId: string, host: LiveHost, command: Command, opts: { id?: string; timeoutMs: number; onProgress?: (fraction: number) => void }): string {
      const id = opts.id ?? newId();
      const conn = host.connection;
      if (!conn) {
        outcomes.set(id, { outcome: { ok: false, code: 'HOST_DISCONNECTED', message: `host ${host.row.name} is not connected` }, at: Date.now() });
        queueMicrotask(() => onSettled(vmId));
        return id;
      }
      inflight.add(id);
      conn
        .command(command, { id, timeoutMs: opts.timeoutMs, onProgress: opts.onProgress })
        .then(
          (value): Outcome => ({ ok: true, value }),
          (err: unknown): Outcome => ({
            ok: false,
            code: err instanceof CommandError ? err.code : 'AGENT_ERROR',
            message: err instanceof Error ? err.message : String(err),
          }),
        )
        .then((outcome) => {
          inflight.delete(id);
          prune();
          outcomes.set(id, { outcome, at: Date.now() });
          onSettled(vmId);
        });
      return id;
    },
    /** The command still runs on its host, as far as this process knows. */
    running: (id: string) => inflight.has(id),
    /** The agent's answer, once; undefined while it runs or when this process never sent it. */
    take(id: string): Outcome | undefined {
      const o = outcomes.get(id);
      outcomes.delete(id);
      return o?.outcome;
    },
    peek: (id: string) => outcomes.get(id)?.outcome,
    cancel(host: LiveHost | undefined, id: string): void {
      if (inflight.has(id)) host?.connection?.cancel(id);
    },
  };
}
