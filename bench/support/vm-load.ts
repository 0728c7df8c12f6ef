// Helper process: POSTs /api/v1/vms over keep-alive HTTP with a bounded number in flight, and reports answers.
import { Agent, request } from 'node:http';
import { type Static, Type } from 'typebox';
import { Compile } from 'typebox/compile';
import { send, serveParent } from './child.ts';

const StartLoad = Type.Object({
  type: Type.Literal('start'),
  url: Type.String(),
  token: Type.String(),
  total: Type.Integer({ minimum: 1 }),
  concurrency: Type.Integer({ minimum: 1 }),
  memoryMiB: Type.Integer({ minimum: 16 }),
  namePrefix: Type.String(),
  /** false: the VMs are only recorded, so the reconciler has next to nothing to do. */
  start: Type.Boolean(),
  timeoutMs: Type.Integer({ minimum: 1 }),
});
export type StartLoad = Static<typeof StartLoad>;
const checkStart = Compile(StartLoad);

function post(agent: Agent, url: URL, token: string, body: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'POST',
      agent,
      timeout: timeoutMs,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: `Bearer ${token}` },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function run(m: StartLoad): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: m.concurrency });
  const url = new URL('/api/v1/vms', m.url);
  const statuses: Record<string, number> = {};
  const latenciesMs: number[] = [];
  const deadline = Date.now() + m.timeoutMs;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < m.total && Date.now() < deadline) {
      const i = next++;
      const body = JSON.stringify({ name: `${m.namePrefix}-${i}`, cpus: 1, memoryMiB: m.memoryMiB, start: m.start });
      const t = performance.now();
      const status = await post(agent, url, m.token, body, 30_000).catch(() => 0);
      latenciesMs.push(performance.now() - t);
      statuses[status] = (statuses[status] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: m.concurrency }, worker));
  const elapsedMs = performance.now() - started;
  agent.destroy();
  send({ type: 'done', statuses, elapsedMs, latenciesMs });
}

serveParent(async (m) => {
  if (m.type === 'stop') {
    send({ type: 'stopped' });
    process.exit(0);
  }
  if (!checkStart.Check(m)) throw new Error('the start message is malformed');
  await run(m);
});
