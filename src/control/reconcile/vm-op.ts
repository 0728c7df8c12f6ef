// The one command a VM controller has in flight for a VM, as recorded in the VM's status: what was sent,
// to which host, under which command id, and by when it must be answered. A pass that finds one either
// takes its outcome, waits for it (until the deadline), or, when this process did not send it, goes by
// what the hosts report.
import type { VmRow } from '../store/schema.ts';

interface OpBase {
  hostId: string;
  commandId: string;
  sentAt: string;
  deadlineAt: string;
}

export type VmOp =
  | (OpBase & { kind: 'start' })
  | (OpBase & { kind: 'stop'; force: boolean })
  | (OpBase & { kind: 'reboot'; request: number })
  | (OpBase & { kind: 'memory'; targetMiB: number })
  /** `hostId` is the stage's host: the destination while preparing and completing, the source while sending. */
  | (OpBase & { kind: 'migrate'; stage: 'preparing' | 'sending' | 'completing'; requestId: string; from: string; to: string; uri?: string; nbd?: string; viaReplica?: boolean; cancelling?: boolean });

/**
 * How long each command may take. A start is longer than a QEMU host's own boot wait (120 s) plus the
 * accelerator probe it runs when a guest did not boot under KVM (up to 2 × 15 s): the host's answer says
 * what went wrong, a deadline here would not.
 */
export const opTimeoutMs = {
  start: 180_000,
  stop: 90_000,
  reboot: 60_000,
  memory: 90_000,
  preparing: 60_000,
  sending: 30 * 60_000,
  completing: 45_000,
} as const;

export const opOf = (vm: VmRow): VmOp | null => (vm.op ? (JSON.parse(vm.op) as VmOp) : null);

/** Milliseconds left before the op's deadline (negative once past). */
export const msLeft = (op: VmOp) => Date.parse(op.deadlineAt) - Date.now();

export function stamp(timeoutMs: number): { sentAt: string; deadlineAt: string } {
  const now = Date.now();
  return { sentAt: new Date(now).toISOString(), deadlineAt: new Date(now + timeoutMs).toISOString() };
}

/** An op as a pass describes it; `send` adds the host, the command id and the times. */
export type OpDraft = VmOp extends infer T ? (T extends VmOp ? Omit<T, 'commandId' | 'sentAt' | 'deadlineAt' | 'hostId'> : never) : never;
