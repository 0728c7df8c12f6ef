// The memory broker's policy: when a host counts as short of memory, how far guests may be ballooned, what
// a donor keeps for itself and how often the broker may act on its own.

export interface MemoryPolicy {
  /** A host with less than this share of its memory available is under pressure: the broker acts. */
  actBelowFraction: number;
  /** Below this share it is urgent (the OOM killer is near): the broker moves a VM off when reclaiming is not enough. */
  urgentBelowFraction: number;
  /** A donor never lends below this share of its memory available. */
  donorReserveFraction: number;
  /** A guest is never ballooned below this share of its boot memory, */
  vmMinFraction: number;
  /** nor below what its balloon stats say it uses plus this (too low panics the guest). */
  guestMarginMiB: number;
  /** Actions the broker takes on a host's pressure per minute, at most. */
  actionsPerHostPerMinute: number;
  /** How long one step of a grant or a return may take before it counts as failed. */
  stepTimeoutMs: number;
  /** How often hosts are checked for pressure. */
  pressureCheckMs: number;
}

export const defaultMemoryPolicy: MemoryPolicy = {
  actBelowFraction: 0.2,
  urgentBelowFraction: 0.05,
  donorReserveFraction: 0.25,
  vmMinFraction: 0.25,
  guestMarginMiB: 64,
  actionsPerHostPerMinute: 6,
  stepTimeoutMs: 30_000,
  pressureCheckMs: 2000,
};

/** The policy with the caller's changes, refused when it makes no sense (before anything is opened). */
export function checkMemoryPolicy(p: Partial<MemoryPolicy> = {}): MemoryPolicy {
  const policy = { ...defaultMemoryPolicy, ...p };
  const fractions = ['actBelowFraction', 'urgentBelowFraction', 'donorReserveFraction', 'vmMinFraction'] as const;
  for (const k of fractions) if (!(policy[k] >= 0 && policy[k] < 1)) throw new Error(`memory policy ${k} must be in [0, 1), not ${policy[k]}`);
  if (policy.urgentBelowFraction > policy.actBelowFraction) throw new Error('memory policy urgentBelowFraction must not be above actBelowFraction');
  for (const k of ['guestMarginMiB', 'actionsPerHostPerMinute', 'stepTimeoutMs', 'pressureCheckMs'] as const) {
    if (!(Number.isFinite(policy[k]) && policy[k] >= 0)) throw new Error(`memory policy ${k} must be a number >= 0`);
  }
  return policy;
}
