// Console tickets: a browser cannot put a header on a WebSocket, and a bearer token in a URL ends up in
// logs and history, so the console URL carries a short-lived ticket that opens one connection.
import { hashToken, newSecret } from '../../../lib/ids.ts';

export const CONSOLE_TICKET_TTL_MS = 30_000;

interface Ticket {
  vmId: string;
  userId: string;
  expiresMs: number;
}

/**
 * Tickets live in this process's memory, keyed by their hash: a ticket is redeemed on the replica that
 * issued it. Several control replicas behind one address would need them in the database instead.
 */
export function createConsoleTickets({ ttlMs = CONSOLE_TICKET_TTL_MS, now = Date.now }: { ttlMs?: number; now?: () => number } = {}) {
  const tickets = new Map<string, Ticket>();
  const sweep = (at: number) => {
    for (const [key, t] of tickets) if (t.expiresMs <= at) tickets.delete(key);
  };
  return {
    issue(vmId: string, userId: string): { ticket: string; expiresAt: string } {
      const at = now();
      sweep(at);
      const ticket = newSecret('awc');
      tickets.set(hashToken(ticket), { vmId, userId, expiresMs: at + ttlMs });
      return { ticket, expiresAt: new Date(at + ttlMs).toISOString() };
    },
    /** What a valid ticket was issued for; it is spent either way, so it never opens two connections. */
    redeem(ticket: string): Ticket | undefined {
      const key = hashToken(ticket);
      const t = tickets.get(key);
      tickets.delete(key);
      return t && t.expiresMs > now() ? t : undefined;
    },
  };
}

export type ConsoleTickets = ReturnType<typeof createConsoleTickets>;
