// agents.heartbeats: 1,000 agents in two helper processes beat once a second over real WebSockets; reports
// the heartbeats control handled per second and control's CPU share, measured in this process alone.
import { join } from 'node:path';
import { Helper } from './support/child.ts';
import { type BenchControl, startBenchControl } from './support/control.ts';
import { report } from './support/report.ts';
import { delay, waitFor } from './support/wait.ts';

const AGENTS = 1000;
const HELPERS = 2;
const INTERVAL_MS = 1000;
const WINDOW_MS = 15_000;

async function heartbeatsTotal(bc: BenchControl): Promise<number> {
  return (await bc.control.metrics.heartbeats.get()).values[0]?.value ?? 0;
}

export async function agentsHeartbeats(): Promise<void> {
  let bc: BenchControl | undefined;
  const helpers: Helper[] = [];
  try {
    bc = await startBenchControl('heartbeats', { heartbeatIntervalMs: INTERVAL_MS });
    const tokens: string[] = [];
    for (let i = 0; i < AGENTS; i++) tokens.push((await bc.control.hosts.createJoinToken(bc.adminId)).token);
    const perHelper = Math.ceil(AGENTS / HELPERS);
    const joining = Array.from({ length: HELPERS }, (_, i) => {
      const fleet = new Helper('fleet.ts', `agent fleet ${i + 1}`);
      helpers.push(fleet);
      return fleet.request({
        type: 'start', control: bc!.url, tokens: tokens.slice(i * perHelper, (i + 1) * perHelper), namePrefix: `hb${i + 1}-host`,
        dataDir: join(bc!.dir, 'agents'), cpus: 8, memoryMiB: 16_384, bootDelayMs: 20, joinConcurrency: 8, timeoutMs: 90_000,
      }, 'ready', 100_000);
    });
    const joinStarted = performance.now();
    await Promise.all(joining);
    await waitFor(() => bc!.readyHosts() === AGENTS, `${AGENTS} ready hosts`, 20_000);
    const joinSeconds = (performance.now() - joinStarted) / 1000;
    // One interval so every agent's heartbeat timer has fired at least once before the window opens.
    await delay(INTERVAL_MS + 500);

    const beats0 = await heartbeatsTotal(bc);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await delay(WINDOW_MS);
    const cpu = process.cpuUsage(cpu0);
    const seconds = (performance.now() - t0) / 1000;
    const beats = (await heartbeatsTotal(bc)) - beats0;
    const ready = bc.readyHosts();

    const params = { agents: AGENTS, helpers: HELPERS, intervalMs: INTERVAL_MS, windowS: Math.round(seconds * 10) / 10 };
    report('agents.heartbeats', beats / seconds, '1/s', { ...params, expected: AGENTS * (1000 / INTERVAL_MS), readyAtEnd: ready, joinS: Math.round(joinSeconds * 10) / 10 });
    report('agents.heartbeats.control_cpu', ((cpu.user + cpu.system) / 1e6 / seconds) * 100, '%', { ...params, userS: Math.round(cpu.user / 1e4) / 100, systemS: Math.round(cpu.system / 1e4) / 100, of: 'one core' });
  } finally {
    for (const h of helpers.reverse()) await h.close(20_000);
    await bc?.close();
  }
}
