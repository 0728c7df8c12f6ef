// What a host's self-fencing reads and writes under the agent's data dir, shared by the agent and the
// watchdog process: the lease (until when, on this machine's monotonic clock, the host may run its HA
// VMs), the placements (each VM's token and whether it is HA), and a marker per VM the host fenced.
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readJson, writeAtomically } from '../credentials.ts';

export interface Placement {
  token: number;
  ha: boolean;
  /** Where the VM's process id is written (QEMU), for the watchdog. */
  pidFile?: string;
}

export const fenceDir = (dataDir: string) => join(dataDir, 'fence');
const leaseFile = (dataDir: string) => join(fenceDir(dataDir), 'lease.json');
const placementsFile = (dataDir: string) => join(fenceDir(dataDir), 'placements.json');
const markerFile = (dataDir: string, vmId: string) => join(fenceDir(dataDir), 'fenced', vmId);
export const watchdogPidFile = (dataDir: string) => join(fenceDir(dataDir), 'watchdog.pid');

/** CLOCK_MONOTONIC in ms: the same for every process on the machine, and never set back. */
export const monotonicMs = () => Number(process.hrtime.bigint() / 1_000_000n);

/** Until when (monotonicMs) the host holds its lease; 0 when it never had one. */
export function readLease(dataDir: string): number {
  const v = readJson(leaseFile(dataDir)) as { validUntilMs?: unknown } | undefined;
  return typeof v?.validUntilMs === 'number' ? v.validUntilMs : 0;
}

export function writeLease(dataDir: string, validUntilMs: number): void {
  mkdirSync(fenceDir(dataDir), { recursive: true });
  writeAtomically(leaseFile(dataDir), JSON.stringify({ validUntilMs }));
}

export function readPlacements(dataDir: string): Record<string, Placement> {
  const v = readJson(placementsFile(dataDir));
  return v && typeof v === 'object' ? (v as Record<string, Placement>) : {};
}

export function writePlacements(dataDir: string, placements: Record<string, Placement>): void {
  mkdirSync(fenceDir(dataDir), { recursive: true });
  writeAtomically(placementsFile(dataDir), JSON.stringify(placements));
}

export function markFenced(dataDir: string, vmId: string, why: string): void {
  mkdirSync(join(fenceDir(dataDir), 'fenced'), { recursive: true });
  writeFileSync(markerFile(dataDir, vmId), why);
}

export const isFenced = (dataDir: string, vmId: string) => existsSync(markerFile(dataDir, vmId));
export const clearFenced = (dataDir: string, vmId: string) => rmSync(markerFile(dataDir, vmId), { force: true });
