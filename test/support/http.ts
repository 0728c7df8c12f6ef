// One JSON request to the API, as tests and benchmarks make them: a bearer token (none when empty), a JSON
// body when given, the parsed answer with its status.
export async function apiRequest<T = any>(
  base: string, token: string, method: string, path: string, body?: unknown, timeoutMs?: number,
): Promise<{ status: number; body: T }> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
    ...(timeoutMs ? { signal: AbortSignal.timeout(timeoutMs) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}
