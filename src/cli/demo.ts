// awan demo: Cloud Control plus N servers on this machine, with sample images, ready to use.
import { existsSync, mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Agent } from '../agent/agent.ts';
import { loadCredentials } from '../agent/credentials.ts';
import { AppError } from '../control/errors.ts';
import type { HypervisorDriver } from '../drivers/types.ts';
import { createMemoryStorage } from '../agent/storage/index.ts';
import type { MakeLogger, StartControl, makeDriver as MakeDriver } from './runtime.ts';
import { demoPassword } from './demo-password.ts';
import { ensureGuest, type TestGuest } from './guest.ts';

export interface DemoOptions {
  hosts: number;
  driver: 'sim' | 'qemu';
  port: number;
  dataDir: string;
  /** Directories images may come from besides the demo's own. */
  imageDirs: string[];
  /** The banner as one JSON line, and JSON log lines even on a terminal. */
  json: boolean;
  startControl: StartControl;
  makeLogger: MakeLogger;
  makeDriver: typeof MakeDriver;
  onSignal: (stop: () => Promise<void>) => void;
  /** Finds or builds the test guest (tests stand in for the real build). */
  ensureGuest?: () => Promise<TestGuest>;
}

export async function runDemo(o: DemoOptions): Promise<void> {
  mkdirSync(o.dataDir, { recursive: true });
  const password = demoPassword(o.dataDir);
  const poolDir = join(o.dataDir, 'pool');
  // The demo's images come from its own directories: the sample files (sim) or the test guest (qemu). The guest
  // comes before any agent too: an agent probes KVM with its kernel, and without one the answer proves nothing.
  const guest = o.driver === 'qemu' ? await (o.ensureGuest ?? ensureGuest)() : undefined;
  const ownDirs = guest ? [...new Set([dirname(guest.kernel), dirname(guest.initrd)])] : [join(o.dataDir, 'images')];
  const logLevel = process.env.AWAN_LOG_LEVEL ?? 'warn';
  const { control, url } = await o.startControl({
    db: `sqlite:${join(o.dataDir, 'awan.db')}`,
    adminPassword: password.initial,
    port: o.port,
    host: '127.0.0.1',
    poolDir,
    imageDirs: [poolDir, ...ownDirs, ...o.imageDirs],
    // Real VMs need something to boot: the test guest, unless a VM names another image.
    defaultImage: o.driver === 'qemu' ? 'test-guest' : undefined,
    // Warnings and errors only: the banner below is what a demo user needs to see, not buried under info lines.
    logLevel,
    json: o.json,
  });
  const adminLogin = await password.settle(control.auth);
  const admin = await control.db.selectFrom('users').select('id').where('username', '=', 'admin').executeTakeFirstOrThrow();

  const agents: { agent: Agent; driver: HypervisorDriver }[] = [];
  // Simulated hosts share one in-memory shared pool, as real ones share a mounted directory.
  const memory = o.driver === 'sim' ? createMemoryStorage() : undefined;
  for (let i = 1; i <= o.hosts; i++) {
    const name = `${o.driver}-host-${i}`;
    const dataDir = join(o.dataDir, 'hosts', name);
    const log = await o.makeLogger(`agent:${name}`, { level: logLevel, json: o.json });
    const probeGuest = guest ? { kernelPath: guest.kernel, initrdPath: guest.initrd, bootedMarker: READY_TEXT } : undefined;
    const driver = await o.makeDriver(o.driver, { name, address: '127.0.0.1', dataDir, memoryMiB: 16384, cpus: 8, log, probeGuest });
    const joinToken = loadCredentials(dataDir) ? undefined : (await control.hosts.createJoinToken(admin.id)).token;
    const agent = new Agent({ control: url, joinToken, driver, dataDir, name, log, ...(memory ? { storage: memory.forHost(dataDir) } : {}) });
    await agent.start();
    agents.push({ agent, driver });
  }

  await addSampleImages(o, control.images, guest);

  if (o.json) console.log(JSON.stringify({ url, hosts: o.hosts, driver: o.driver, username: 'admin', ...(adminLogin.password === undefined ? { password: null, passwordNote: adminLogin.note } : { password: adminLogin.password }) }));
  else console.log(`
awan demo is running: ${o.hosts} ${o.driver} hosts
  API and docs  ${url}/docs
  login         admin / ${adminLogin.password ?? `(${adminLogin.note})`}
  CLI           npm run awan -- login --server ${url} --username admin
                npm run awan -- vm create web-1 --cpus 1 --memory 512
Ctrl-C stops everything.`);

  o.onSignal(async () => {
    for (const { agent, driver } of agents) {
      await agent.stop();
      // Demo VMs live as long as the demo: a QEMU host stops its guests on the way out.
      if (o.driver === 'qemu') for (const vm of await driver.list()) await driver.stop(vm.id, { force: true }).catch(() => undefined);
      await driver.close();
    }
    await control.close();
  });
}

/** What the test guest prints once it is up: the probe's proof of a booted kernel and the image's ready text. */
const READY_TEXT = 'AWAN-BOOTED';

async function addSampleImages(o: DemoOptions, images: import('../control/features/images/service.ts').ImageService, guest?: TestGuest): Promise<void> {
  const existing = new Set((await images.list()).map((i) => i.name));
  if (guest) {
    if (existing.has('test-guest')) return;
    await images.create({ name: 'test-guest', format: 'kernel', kernelPath: guest.kernel, initrdPath: guest.initrd, cmdline: guest.cmdline, readyText: READY_TEXT, os: 'busybox' });
    return;
  }
  // Simulated hosts read no disk; the sample images are sparse placeholder files (no space used) of their
  // nominal size, so the catalogue is real and qemu-img reports that size.
  const dir = join(o.dataDir, 'images');
  mkdirSync(dir, { recursive: true });
  for (const [name, os, sizeMiB] of [['debian-12', 'debian', 2048], ['ubuntu-24.04', 'ubuntu', 3072], ['alpine-3.20', 'alpine', 256]] as const) {
    if (existing.has(name)) continue;
    const path = join(dir, `${name}.raw`);
    if (!existsSync(path)) writeFileSync(path, '');
    truncateSync(path, sizeMiB * 1024 * 1024);
    try {
      await images.create({ name, format: 'raw', path, os });
    } catch (err) {
      // Images are checked with qemu-img, and never accepted unchecked: without it the demo runs without samples.
      if (!(err instanceof AppError && err.code === 'UNAVAILABLE')) throw err;
      console.warn(`sample images skipped: ${err.message}`);
      return;
    }
  }
}
