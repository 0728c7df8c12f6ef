// The console WebSocket's URL for a test: a fresh single-use ticket from the API, as every client gets one.

/** A ticket for the console WebSocket of a VM, and the URL that opens it. */
export async function consoleUrl(url: string, token: string, vm: string): Promise<string> {
  const res = await fetch(`${url}/api/v1/vms/${encodeURIComponent(vm)}/console/tickets`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  const body = (await res.json()) as { ticket?: string; error?: { message: string } };
  if (!body.ticket) throw new Error(`no console ticket for ${vm}: ${res.status} ${body.error?.message ?? ''}`);
  return `${url.replace(/^http/, 'ws')}/api/v1/vms/${encodeURIComponent(vm)}/console?ticket=${encodeURIComponent(body.ticket)}`;
}
