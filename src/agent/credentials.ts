// What an agent keeps in its data directory (mode 0600): the host credential it got when it joined, the
// control replicas it has heard of (so it finds the leader when the one it dialled is gone), and the
// highest leader epoch it has seen (so a deposed leader's late commands stay refused across restarts).
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface AgentCredentials {
  hostId: string;
  credential: string;
  /** The URL it joined through. */
  control: string;
  /** Every control replica it was told of, the leader's first. */
  controls?: string[];
}

const file = (dataDir: string) => join(dataDir, 'agent-credentials.json');
const epochFile = (dataDir: string) => join(dataDir, 'control-epoch.json');

/** Written beside and renamed over, so a crash never leaves half a file. */
export function writeAtomically(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, path);
}

export function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`${path} is malformed: ${(err as Error).message}`);
  }
}

export function loadCredentials(dataDir: string): AgentCredentials | undefined {
  const parsed = readJson(file(dataDir)) as Partial<AgentCredentials> | undefined;
  if (parsed === undefined) return undefined;
  if (typeof parsed.hostId === 'string' && typeof parsed.credential === 'string' && typeof parsed.control === 'string') {
    const controls = Array.isArray(parsed.controls) ? parsed.controls.filter((u): u is string => typeof u === 'string') : undefined;
    return { hostId: parsed.hostId, credential: parsed.credential, control: parsed.control, ...(controls ? { controls } : {}) };
  }
  throw new Error(`${file(dataDir)} is malformed`);
}

export function saveCredentials(dataDir: string, creds: AgentCredentials): void {
  mkdirSync(dataDir, { recursive: true });
  writeAtomically(file(dataDir), JSON.stringify(creds, null, 2));
}

/** The highest leader epoch this agent has seen; 0 before any. */
export function loadEpoch(dataDir: string): number {
  const parsed = readJson(epochFile(dataDir)) as { epoch?: unknown } | undefined;
  const epoch = parsed?.epoch;
  if (parsed === undefined) return 0;
  if (typeof epoch === 'number' && Number.isSafeInteger(epoch) && epoch >= 0) return epoch;
  throw new Error(`${epochFile(dataDir)} is malformed`);
}

export function saveEpoch(dataDir: string, epoch: number): void {
  mkdirSync(dataDir, { recursive: true });
  writeAtomically(epochFile(dataDir), JSON.stringify({ epoch }));
}
