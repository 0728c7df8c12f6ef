// A console opened on a replica that does not lead: only the leader holds the agents' connections, so
// the replica hands the ticket request and the WebSocket to the leader and relays both ways. The leader
// checks the ticket and the VM, and its close code and reason reach the viewer unchanged.
import WebSocket from 'ws';
import { AppError } from '../../errors.ts';

export interface ConsoleRelay {
  /** True while this process leads (then nothing is relayed). */
  leading(): boolean;
  /** The leader's base URL (http://host:port), when one is known. */
  leaderUrl(): Promise<string | undefined>;
}

/** Close codes a peer may not send itself; they say the leader's socket ended without a frame. */
const reserved = new Set([1005, 1006, 1015]);

export async function leaderOrFail(relay: ConsoleRelay): Promise<string> {
  const url = await relay.leaderUrl().catch(() => undefined);
  if (!url) throw new AppError('UNAVAILABLE', 'this control replica does not lead and no leader is known; consoles are served by the leader');
  return url.replace(/\/+$/, '');
}

/** Asks the leader for a ticket with the viewer's own credentials; returns its status and body. */
export async function ticketFromLeader(relay: ConsoleRelay, path: string, authorization: string | undefined): Promise<{ status: number; body: unknown }> {
  const base = await leaderOrFail(relay);
  const res = await fetch(base + path, { method: 'POST', headers: authorization ? { authorization } : {} }).catch((err: Error) => {
    throw new AppError('UNAVAILABLE', `the leader at ${base} does not answer: ${err.message}`);
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as unknown) : undefined };
}

/** Joins a viewer's socket to the same console URL on the leader. */
export function relayConsole(viewer: WebSocket, leaderBase: string, pathAndQuery: string): void {
  const upstream = new WebSocket(leaderBase.replace(/^http/, 'ws') + pathAndQuery);
  const early: { data: WebSocket.RawData; binary: boolean }[] = [];
  upstream.on('open', () => {
    for (const m of early.splice(0)) upstream.send(m.binary ? m.data : m.data.toString());
  });
  upstream.on('message', (data, binary) => {
    if (viewer.readyState === viewer.OPEN) viewer.send(binary ? data : data.toString());
  });
  upstream.on('close', (code, reason) => {
    if (viewer.readyState === viewer.OPEN) viewer.close(reserved.has(code) ? 1011 : code, reason.toString() || 'the leader closed the console');
  });
  upstream.on('error', (err) => {
    if (viewer.readyState === viewer.OPEN) viewer.close(4009, `the leader at ${leaderBase} does not answer: ${err.message}`.slice(0, 120));
  });
  viewer.on('message', (data, binary) => {
    if (upstream.readyState === upstream.OPEN) upstream.send(binary ? data : data.toString());
    else if (upstream.readyState === upstream.CONNECTING) early.push({ data, binary });
  });
  viewer.on('close', () => {
    if (upstream.readyState === upstream.OPEN || upstream.readyState === upstream.CONNECTING) upstream.terminate();
  });
}
