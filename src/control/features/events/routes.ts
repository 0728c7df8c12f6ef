// Event routes: the log as JSON pages, or live as Server-Sent Events when the client asks for them.
import { Type } from 'typebox';
import { type App, errors, requireRole } from '../../http/types.ts';
import type { AwanEvent, EventService } from './service.ts';

const EventSchema = Type.Object({
  seq: Type.Integer(),
  at: Type.String(),
  type: Type.String(),
  objectKind: Type.String(),
  objectId: Type.String(),
  message: Type.String(),
  data: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});

export function eventRoutes(app: App, events: EventService): void {
  app.get('/api/v1/events', {
    config: { role: 'viewer' },
    schema: {
      tags: ['events'],
      description: 'The event log. With `Accept: text/event-stream` the answer is a live SSE stream; `after` (or Last-Event-ID) replays what was missed.',
      querystring: Type.Object(
        { after: Type.Optional(Type.Integer({ minimum: 0 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })), object: Type.Optional(Type.String()), type: Type.Optional(Type.String()) },
        { additionalProperties: false },
      ),
      response: { 200: Type.Object({ items: Type.Array(EventSchema), nextCursor: Type.Union([Type.String(), Type.Null()]) }), ...errors },
    },
  }, async (req, reply) => {
    requireRole(req.principal, 'viewer');
    const lastId = Number(req.headers['last-event-id']);
    const after = req.query.after ?? (Number.isFinite(lastId) ? lastId : undefined);
    const matches = (e: AwanEvent) => (!req.query.object || e.objectId === req.query.object) && (!req.query.type || e.type.startsWith(req.query.type));
    if (!(req.headers.accept ?? '').includes('text/event-stream')) {
      const limit = req.query.limit ?? 100;
      const items = await events.list({ after, limit, objectId: req.query.object, type: req.query.type });
      return { items, nextCursor: items.length === limit ? String(items[items.length - 1].seq) : null };
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const write = (e: AwanEvent) => {
      if (!matches(e)) return;
      res.write(`${e.seq ? `id: ${e.seq}\n` : ''}event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    };
    // Subscribe before replaying, then drop duplicates, so no event falls between the two.
    const buffered: AwanEvent[] = [];
    let live = false;
    let lastSeq = after ?? 0;
    const unsubscribe = events.subscribe((e) => {
      if (!live) buffered.push(e);
      else if (e.seq === 0 || e.seq > lastSeq) {
        if (e.seq) lastSeq = e.seq;
        write(e);
      }
    });
    if (after !== undefined) {
      for (const e of await events.list({ after, limit: 1000 })) {
        write(e);
        lastSeq = e.seq;
      }
    }
    for (const e of buffered) if (e.seq === 0 || e.seq > lastSeq) write(e);
    live = true;
    res.write(': connected\n\n');
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    req.raw.on('close', () => {
      clearInterval(keepAlive);
      unsubscribe();
    });
  });
}
