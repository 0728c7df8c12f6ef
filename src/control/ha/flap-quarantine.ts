// Flap quarantine: a host declared failed too often lately is not trusted when it comes back. The host
// registry asks these rules, from the host's row alone, whether a returning host is quarantined, why, and
// when its quarantine ends (an admin lifted it, or it stayed up without failing for a quiet period).
import type { HostRow } from '../store/schema.ts';

export interface FlapPolicy {
  /** Failures within `windowMs` that quarantine a host; 0 turns quarantine off. */
  failures: number;
  windowMs: number;
  /** How long a quarantined host must stay up without failing before the quarantine lifts itself; 0: only an admin lifts it. */
  quietMs: number;
}

export const defaultFlapPolicy: FlapPolicy = { failures: 3, windowMs: 600_000, quietMs: 1_800_000 };

/** Checks a policy from configuration; throws with what is wrong. */
export function checkFlapPolicy(p: FlapPolicy): FlapPolicy {
  for (const [k, v] of Object.entries(p)) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`host flap setting ${k} must be a whole number ≥ 0, not ${v}`);
  }
  if (p.failures > 0 && p.windowMs === 0) throw new Error('the host flap window must be longer than 0 ms when hosts are quarantined');
  return p;
}

const parse = (iso: string | null) => (iso ? Date.parse(iso) : 0);

/** When the host was declared failed lately (ms), none from before an admin last lifted its quarantine. */
export function failureTimes(row: HostRow): number[] {
  const lifted = parse(row.quarantine_lifted_at);
  return (row.recent_failures ? (JSON.parse(row.recent_failures) as string[]) : []).map(Date.parse).filter((t) => t > lifted);
}

/** The failure history with one more failure at `nowMs`, only what falls within the window. */
export function withFailure(row: HostRow, nowMs: number, p: FlapPolicy): string {
  const kept = failureTimes(row).filter((t) => nowMs - t < p.windowMs);
  return JSON.stringify([...kept, nowMs].map((t) => new Date(t).toISOString()));
}

/**
 * Whether a failed host that comes back is quarantined: it failed while quarantined (the quarantine was
 * not lifted), or it failed `failures` times within the window.
 */
export function staysOut(row: HostRow, nowMs: number, p: FlapPolicy): boolean {
  if (p.failures <= 0) return false;
  if (row.quarantined_at && parse(row.quarantine_lifted_at) < parse(row.quarantined_at)) return true;
  return failureTimes(row).filter((t) => nowMs - t < p.windowMs).length >= p.failures;
}

const minutes = (ms: number) => (ms % 60_000 === 0 ? `${ms / 60_000} minutes` : `${Math.round(ms / 1000)} s`);

export function quarantineReason(row: HostRow, sinceMs: number, p: FlapPolicy): string {
  const times = failureTimes(row).map((t) => new Date(t).toISOString());
  const lift = p.quietMs > 0 ? `an admin activates it or it stays up for ${minutes(p.quietMs)} without failing` : 'an admin activates it';
  return `flapping: declared failed ${times.length} times within ${minutes(p.windowMs)} (${times.join(', ')}); quarantined since ${new Date(sinceMs).toISOString()}: it takes no new VMs and runs no HA VMs until ${lift}`;
}

/** Why a quarantine ends now, or undefined while it holds. Only an admin lifts that of a host not connected. */
export function liftReason(row: HostRow, nowMs: number, p: FlapPolicy, connected: boolean): string | undefined {
  if (!row.quarantined_at) return 'the quarantine has no start recorded';
  const since = parse(row.quarantined_at);
  if (parse(row.quarantine_lifted_at) >= since) return `an admin lifted the quarantine at ${row.quarantine_lifted_at}`;
  if (!connected || p.quietMs <= 0) return undefined;
  const last = Math.max(since, ...failureTimes(row));
  if (nowMs - last >= p.quietMs) return `quarantine lifted: no failure for ${minutes(p.quietMs)} (since ${new Date(last).toISOString()})`;
  return undefined;
}
