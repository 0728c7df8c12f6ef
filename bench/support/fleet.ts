// Helper process: many Node Control agents (the real Agent class on sim drivers) joined to one control.
import { join } from 'node:path';
import { type Static, Type } from 'typebox';
import { Compile } from 'typebox/compile';
import { Agent } from '../../src/agent/agent.ts';
import { type SimDriver, createSimDriver } from '../../src/drivers/sim/index.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { send, serveParent } from './child.ts';
import { waitFor } from './wait.ts';

const StartFleet = Type.Object({
  type: Type.Literal('start'),
  control: Type.String(),
  tokens: Type.Array(Type.String()),
  namePrefix: Type.String(),
  dataDir: Type.String(),
  cpus: Type.Integer({ minimum: 1 }),
  memoryMiB: Type.Integer({ minimum: 16 }),
  bootDelayMs: Type.Integer({ minimum: 0 }),
  joinConcurrency: Type.Integer({ minimum: 1 }),
  timeoutMs: Type.Integer({ minimum: 1 }),
});
export type StartFleet = Static<typeof StartFleet>;
const checkStart = Compile(StartFleet);

const hosts: { agent: Agent; driver: SimDriver }[] = [];
const log = createLogger('bench:fleet', process.env.AWAN_BENCH_LOG ?? 'silent');

async function start(m: StartFleet): Promise<void> {
  const started = Date.now();
  let next = 0;
  // A few joins at a time: each is an HTTP call and a transaction on control.
  const worker = async () => {
    while (next < m.tokens.length) {
      const i = next++;
      const name = `${m.namePrefix}-${i}`;
      const driver = createSimDriver({ hostname: name, address: '127.0.0.1', cpus: m.cpus, memoryMiB: m.memoryMiB, bootDelayMs: m.bootDelayMs });
      const agent = new Agent({ control: m.control, joinToken: m.tokens[i], driver, dataDir: join(m.dataDir, name), name, log });
      hosts.push({ agent, driver });
      await agent.start();
    }
  };
  await Promise.all(Array.from({ length: m.joinConcurrency }, worker));
  await waitFor(() => hosts.every((h) => h.agent.connected), 'every agent to connect', Math.max(1, m.timeoutMs - (Date.now() - started)));
  send({ type: 'ready', agents: hosts.length, joinMs: Date.now() - started });
}

async function stop(): Promise<void> {
  await Promise.all(hosts.map(async (h) => {
    await h.agent.stop();
    await h.driver.close();
  }));
  send({ type: 'stopped' });
  process.exit(0);
}

serveParent(async (m) => {
  if (m.type === 'stop') return stop();
  if (!checkStart.Check(m)) throw new Error('the start message is malformed');
  await start(m);
});
