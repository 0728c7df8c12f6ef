// The serial console of a VM over a WebSocket: history first, then live output; what the client types
// goes to the guest. Control relays; the agent streams only while someone watches.
import { Type } from 'typebox';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import type { EventService } from '../events/service.ts';
import type { HostRegistry } from '../hosts/registry.ts';
import { CONSOLE_TICKET_TTL_MS, type ConsoleTickets } from './console-tickets.ts';
import { type ConsoleRelay, leaderOrFail, relayConsole, ticketFromLeader } from './console-relay.ts';
import type { VmService } from './service.ts';

/**
 * The viewer first gets a ticket (bearer auth, operator role), then opens `…/console?ticket=`.
 * Close codes: 1000 the VM stopped (or is being deleted), 4001 unauthorized, 4004 unknown VM, 4009 VM not
 * running or host unreachable, 4010 the VM failed. The close frame's reason says why, once: clients show it.
 */
export function consoleRoute(app: App, deps: { vms: VmService; registry: HostRegistry; events: EventService; tickets: ConsoleTickets; relay?: ConsoleRelay }): void {
  const watchers = new Map<string, number>();

  app.post('/api/v1/vms/:id/console/tickets', {
    config: { role: 'operator' },
    schema: {
      tags: ['vms'],
      description: `A single-use ticket for the console WebSocket of a VM, valid for ${CONSOLE_TICKET_TTL_MS / 1000} s: open \`/api/v1/vms/{id}/console?ticket=…\`.`,
      params: IdParams,
      response: { 201: Type.Object({ ticket: Type.String(), expiresAt: Type.String() }), ...errors },
    },
  }, async (req, reply) => {
    const p = requireRole(req.principal, 'operator');
    // Not the leader: the leader issues the ticket, since the console WebSocket is relayed to it.
    if (deps.relay && !deps.relay.leading()) {
      const r = await ticketFromLeader(deps.relay, req.url, req.headers.authorization);
      return reply.code(r.status).send(r.body as never);
    }
    const vm = await deps.vms.find(req.params.id);
    return reply.code(201).send(deps.tickets.issue(vm.id, p.userId));
  });

  app.get('/api/v1/vms/:id/console', {
    websocket: true,
    config: { role: 'public' },
    schema: { hide: true },
  }, async (socket, req) => {
    const fail = (code: number, message: string) => socket.close(code, closeReason(message));
    if (deps.relay && !deps.relay.leading()) {
      const leader = await leaderOrFail(deps.relay).catch((err: Error) => fail(4009, err.message));
      if (leader) relayConsole(socket, leader, req.url);
      return;
    }
    const { id } = req.params as { id: string };
    const query = new URL(req.url, 'http://x').searchParams;
    // A bearer token in a URL outlives the request in proxy logs and shell history: only tickets go there.
    if (query.has('token')) return fail(4001, 'tokens in the URL are refused; get a ticket from POST /api/v1/vms/{id}/console/tickets');
    const ticket = query.get('ticket');
    const granted = ticket ? deps.tickets.redeem(ticket) : undefined;
    if (!granted) return fail(4001, `needs a valid ?ticket= (single use, ${CONSOLE_TICKET_TTL_MS / 1000} s) from POST /api/v1/vms/{id}/console/tickets`);
    const vm = await deps.vms.find(id).catch(() => undefined);
    if (!vm) return fail(4004, `VM ${id} not found`);
    if (vm.id !== granted.vmId) return fail(4001, `the ticket is for another VM than ${vm.name}`);
    const host = vm.host_id ? deps.registry.get(vm.host_id) : undefined;
    if (!host?.connection || vm.phase !== 'running') return fail(4009, `VM ${vm.name} is ${vm.phase}; its console is available while it runs`);
    let conn = host.connection;

    // Buffer live output until the history is sent, so nothing is lost or reordered.
    const pending: string[] = [];
    let live = false;
    const unsubscribe = deps.registry.onConsole(vm.id, (data) => (live ? socket.send(data) : pending.push(data)));
    // The console follows the VM: to its new host after a migration, and back after its agent reconnects.
    const unfollow = deps.events.subscribe((e) => {
      // A console of a VM that is no more ends with it; a stopping guest's last words still get through.
      if (e.objectId === vm.id && ended.has(e.type)) return fail(e.type === 'vm.failed' ? 4010 : 1000, e.message);
      const moved = e.objectId === vm.id && e.type === 'vm.migrated';
      const back = e.type === 'host.ready' && e.objectId === deps.registry.get(conn.hostId)?.row.id;
      if (moved || back) void reattach();
    });
    async function reattach(): Promise<void> {
      const current = await deps.vms.find(vm!.id).catch(() => undefined);
      const next = current?.host_id ? deps.registry.get(current.host_id)?.connection : undefined;
      if (!next) return;
      conn = next;
      try {
        await conn.command({ op: 'consoleAttach', vmId: vm!.id }, { timeoutMs: 10_000 });
        socket.send(`\r\n[awan] console reattached on host ${deps.registry.get(conn.hostId)?.row.name ?? conn.hostId}\r\n`);
      } catch (err) {
        fail(4009, err instanceof Error ? err.message : String(err));
      }
    }
    watchers.set(vm.id, (watchers.get(vm.id) ?? 0) + 1);
    socket.on('close', () => {
      unsubscribe();
      unfollow();
      const n = (watchers.get(vm.id) ?? 1) - 1;
      if (n > 0) watchers.set(vm.id, n);
      else {
        watchers.delete(vm.id);
        void conn.command({ op: 'consoleDetach', vmId: vm.id }).catch(() => undefined);
      }
    });
    socket.on('message', (data) => {
      const text = data.toString();
      for (let i = 0; i < text.length; i += 4096) {
        void conn.command({ op: 'consoleWrite', vmId: vm.id, data: text.slice(i, i + 4096) }).catch(() => undefined);
      }
    });
    try {
      const history = await conn.command<string>({ op: 'consoleAttach', vmId: vm.id }, { timeoutMs: 10_000 });
      // The viewer left while the attach was under way: its detach may have overtaken it, so send another.
      if (socket.readyState !== socket.OPEN) {
        if (!watchers.has(vm.id)) void conn.command({ op: 'consoleDetach', vmId: vm.id }).catch(() => undefined);
        return;
      }
      if (typeof history === 'string' && history) socket.send(history);
      for (const d of pending.splice(0)) socket.send(d);
      live = true;
    } catch (err) {
      fail(4009, err instanceof Error ? err.message : String(err));
    }
  });
}

const ended = new Set(['vm.stopped', 'vm.failed', 'vm.deleting', 'vm.deleted']);

/** A close frame's reason holds at most 123 bytes of UTF-8. */
function closeReason(message: string): string {
  if (Buffer.byteLength(message) <= 123) return message;
  let cut = message;
  while (Buffer.byteLength(cut) > 120) cut = cut.slice(0, -1);
  return `${cut}…`;
}
