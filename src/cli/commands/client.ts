// The HTTP client of the API: bearer token, JSON in and out, error bodies turned into ApiError.
import { resolveServer, resolveToken } from './config.ts';
import { withNames } from './names.ts';

/** An error the server answered with: `{"error":{"code","message","details"}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The server did not answer at all; distinct from ApiError so the message can point at --server. */
export class UnreachableError extends Error {
  constructor(readonly server: string, cause: string) {
    super(`cannot reach awan control at ${server} (${cause}); is it running? Point the CLI at it with --server URL or AWAN_SERVER`);
    this.name = 'UnreachableError';
  }
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

const REQUEST_TIMEOUT_MS = 30_000;

function errorFromBody(status: number, body: unknown, fallback: string): ApiError {
  const e = typeof body === 'object' && body !== null ? (body as { error?: unknown }).error : undefined;
  if (typeof e === 'object' && e !== null) {
    const { code, message, details } = e as Record<string, unknown>;
    if (typeof code === 'string' && typeof message === 'string') {
      return new ApiError(status, code, message, typeof details === 'object' && details !== null ? (details as Record<string, unknown>) : undefined);
    }
  }
  // Not our error shape (a proxy's page, say): keep the status so the user still learns something.
  return new ApiError(status, `HTTP_${status}`, fallback || `the server answered ${status}`);
}

function describeCause(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
}

export class ApiClient {
  constructor(
    readonly server: string,
    private readonly token: string | undefined,
  ) {}

  /** `names: false` keeps ids in an error's message as they are (the name lookups use it themselves). */
  async request<T>(method: string, path: string, body?: unknown, opts: { auth?: boolean; signal?: AbortSignal; names?: boolean } = {}): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (opts.auth !== false && this.token) headers.authorization = `Bearer ${this.token}`;
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]) : AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    let res: Response;
    try {
      res = await fetch(this.server + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      throw new UnreachableError(this.server, describeCause(err));
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      if (res.ok) throw new ApiError(res.status, 'BAD_RESPONSE', `the server at ${this.server} did not answer JSON; is it awan control?`);
      throw errorFromBody(res.status, undefined, text.slice(0, 200));
    }
    if (!res.ok) {
      const err = errorFromBody(res.status, parsed, text.slice(0, 200));
      // The hint helps every command but login itself, where it would only repeat what was just tried.
      if (opts.auth !== false && (err.code === 'UNAUTHORIZED' || err.code === 'TOKEN_EXPIRED')) err.message += ` (run: awan login --server ${this.server})`;
      else if (opts.names !== false && opts.auth !== false) err.message = await withNames(this, err.message);
      throw err;
    }
    return parsed as T;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** Follows the cursor to the end, for lists a person wants whole. */
  async all<T>(path: string, query: Record<string, string | undefined> = {}): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.get<Page<T>>(path + queryString({ ...query, limit: '1000', cursor }));
      items.push(...page.items);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    return items;
  }
}

export function queryString(q: Record<string, string | undefined>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== '') params.set(k, v);
  const s = params.toString();
  return s ? `?${s}` : '';
}

/** Path segments come from the command line; a name with `/` must not walk to another route. */
export const seg = (s: string) => encodeURIComponent(s);

export function createClient(opts: { server?: string }, env: NodeJS.ProcessEnv = process.env): ApiClient {
  const server = resolveServer(opts.server, env);
  return new ApiClient(server, resolveToken(server, env));
}
