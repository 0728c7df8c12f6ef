// Where the CLI talks to and with which token: --server / AWAN_SERVER, else the server of the last login,
// and the per-server credentials file that remembers both.
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

export interface StoredCredential {
  token: string;
  username: string;
  expiresAt: string | null;
}

/**
 * The server to talk to: --server, then AWAN_SERVER, then the one `awan login` last logged in to, then the
 * default. In one canonical spelling, so `http://h:8080/` and `http://h:8080` share one token.
 */
export function resolveServer(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return canonicalServer(flag ?? (env.AWAN_SERVER || undefined) ?? readFile(credentialsPath(env)).current ?? DEFAULT_SERVER);
}

export function canonicalServer(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`server ${raw} is not a URL (expected e.g. ${DEFAULT_SERVER})`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`server ${raw} must be an http:// or https:// URL`);
  return url.origin + url.pathname.replace(/\/+$/, '');
}

export function credentialsPath(env: NodeJS.ProcessEnv = process.env): string {
  // XDG says a relative XDG_CONFIG_HOME is invalid and must be ignored.
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.startsWith('/') ? env.XDG_CONFIG_HOME : join(homedir(), '.config');
  return join(base, 'awan', 'credentials.json');
}

interface CredentialFile {
  /** The server of the last login: where commands go when neither --server nor AWAN_SERVER says. */
  current?: string;
  servers: Record<string, StoredCredential>;
}

function isCredential(v: unknown): v is StoredCredential {
  if (typeof v !== 'object' || v === null) return false;
  const c = v as Record<string, unknown>;
  return typeof c.token === 'string' && typeof c.username === 'string' && (c.expiresAt === null || typeof c.expiresAt === 'string');
}

/** Reads the file leniently: a missing or hand-mangled file means "not logged in", not a crash. */
function readFile(path: string): CredentialFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return { servers: {} };
  }
  const { servers, current } = typeof parsed === 'object' && parsed !== null ? (parsed as { servers?: unknown; current?: unknown }) : {};
  const out: CredentialFile = { servers: {} };
  if (typeof servers === 'object' && servers !== null) for (const [server, cred] of Object.entries(servers)) if (isCredential(cred)) out.servers[server] = cred;
  // Only a server we hold a token for, in a spelling that parses: a mangled entry means "no default".
  if (typeof current === 'string' && out.servers[current]) {
    try {
      out.current = canonicalServer(current);
    } catch {
      // fall back to the default server
    }
  }
  return out;
}

export function loadCredential(server: string, env: NodeJS.ProcessEnv = process.env): StoredCredential | undefined {
  return readFile(credentialsPath(env)).servers[server];
}

/** Keeps the token of `server` and makes it the server later commands talk to. */
export function saveCredential(server: string, cred: StoredCredential, env: NodeJS.ProcessEnv = process.env): string {
  const path = credentialsPath(env);
  const servers = { ...readFile(path).servers, [server]: cred };
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // Write a private temp file and rename it, so the token is never world-readable, not even for a moment,
  // and a crash mid-write cannot truncate the tokens of other servers.
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ current: server, servers }, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

/** AWAN_TOKEN wins over the file so scripts can use an API token without logging in. */
export function resolveToken(server: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.AWAN_TOKEN || loadCredential(server, env)?.token;
}
