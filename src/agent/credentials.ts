// The host credential an agent got when it joined, kept in its data directory (mode 0600).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface AgentCredentials {
  hostId: string;
  credential: string;
  control: string;
}

const file = (dataDir: string) => join(dataDir, 'agent-credentials.json');

export function loadCredentials(dataDir: string): AgentCredentials | undefined {
  try {
    const parsed = JSON.parse(readFileSync(file(dataDir), 'utf8')) as Partial<AgentCredentials>;
    if (typeof parsed.hostId === 'string' && typeof parsed.credential === 'string' && typeof parsed.control === 'string') {
      return { hostId: parsed.hostId, credential: parsed.credential, control: parsed.control };
    }
    throw new Error(`${file(dataDir)} is malformed`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export function saveCredentials(dataDir: string, creds: AgentCredentials): void {
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(file(dataDir), JSON.stringify(creds, null, 2), { mode: 0o600 });
}
