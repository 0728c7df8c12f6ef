// Private networks for end-to-end tests: network namespaces on one bridge, created per run, removed after.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { requireCommand } from './system.ts';

/**
 * One bridge namespace (`<prefix>-ctl`, holding the bridge at .1), one namespace per host (.11, .12, …) with a
 * veth into the bridge, and a veth from the root namespace (.254) so the test process reaches .1.
 */
export interface TestNetwork {
  prefix: string;
  /** The first three octets of the /24 this network owns, e.g. `10.213.77`. */
  subnet: string;
  bridgeNs: string;
  bridgeAddress: string;
  rootAddress: string;
  hosts: { name: string; ns: string; address: string }[];
  /** The argv that runs `argv` inside namespace `ns`. */
  inNs(ns: string, argv: string[]): string[];
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

function ipQuiet(args: string[]): void {
  try {
    ip(args);
  } catch {
    // already gone
  }
}

const toInt = (a: string): number => a.split('.').reduce((n, o) => n * 256 + Number(o), 0) >>> 0;

/** Every IPv4 prefix the root namespace routes or owns, default routes excepted. */
function takenPrefixes(): { base: number; bits: number }[] {
  const out: { base: number; bits: number }[] = [];
  const types = new Set(['unicast', 'local', 'broadcast', 'multicast', 'anycast', 'blackhole', 'unreachable', 'prohibit', 'throw', 'nat']);
  const lines = [...ip(['-4', 'route', 'show', 'table', 'all']).split('\n'), ...ip(['-4', '-o', 'addr', 'show']).split('\n').map((l) => /inet (\S+)/.exec(l)?.[1] ?? '')];
  for (const line of lines) {
    const words = line.trim().split(/\s+/);
    if (types.has(words[0])) words.shift();
    const dst = words[0];
    const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(dst ?? '');
    if (!m) continue; // 'default' and empty lines
    const bits = m[2] === undefined ? 32 : Number(m[2]);
    if (bits === 0) continue;
    out.push({ base: toInt(m[1]), bits });
  }
  return out;
}

/** A 10.x.y.0/24 that overlaps no route or address of this machine, chosen from `seed`. */
export function freeSubnet(seed: number): string {
  const taken = takenPrefixes();
  for (let i = 0; i < 190 * 256; i++) {
    const n = (seed * 7919 + i) % (190 * 256);
    const x = 64 + Math.floor(n / 256);
    const y = n % 256;
    const base = toInt(`10.${x}.${y}.0`);
    const overlaps = taken.some((t) => {
      const bits = Math.min(t.bits, 24);
      const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
      return ((t.base & mask) >>> 0) === ((base & mask) >>> 0);
    });
    if (!overlaps) return `10.${x}.${y}`;
  }
  throw new Error('no free 10.x.y.0/24 on this machine');
}

function namespacesOf(prefix: string): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n && n.startsWith(`${prefix}-`));
}

/** A zombie has left its namespace for all that matters here. */
function alive(pid: number): boolean {
  try {
    return !/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * Removes everything named `<prefix>-*`: kills (SIGKILL, by pid) the processes left inside those namespaces,
 * then deletes the namespaces and the root namespace's links. Safe to call when nothing exists.
 */
export async function removeTestNetwork(prefix: string): Promise<void> {
  for (const ns of namespacesOf(prefix)) {
    const pids = ip(['netns', 'pids', ns]).split('\n').map(Number).filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    const deadline = Date.now() + 10_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    ipQuiet(['netns', 'del', ns]);
  }
  for (const line of ip(['-o', 'link', 'show']).split('\n')) {
    const name = /^\d+:\s+([^:@\s]+)/.exec(line)?.[1];
    if (name?.startsWith(`${prefix}-`)) ipQuiet(['link', 'del', name]);
  }
}

/** Builds the network; on a failure half-way it removes what it made before throwing. */
export async function createTestNetwork(prefix: string, hostNames: string[], seed = process.pid): Promise<TestNetwork> {
  requireCommand('ip', 'apt-get install iproute2 qemu-system-x86 qemu-utils busybox-static cpio');
  if (process.getuid?.() !== 0) throw new Error('network namespaces need root: run the end-to-end tests as root');
  if (`${prefix}-brx`.length > 15 || hostNames.some((h) => `${prefix}-${h}b`.length > 15)) {
    throw new Error(`prefix ${prefix} makes interface names longer than 15 characters`);
  }
  const subnet = freeSubnet(seed);
  const bridgeNs = `${prefix}-ctl`;
  const bridge = `${prefix}-br`;
  const nsIp = (ns: string, args: string[]) => ip(['-n', ns, ...args]);
  const net: TestNetwork = {
    prefix,
    subnet,
    bridgeNs,
    bridgeAddress: `${subnet}.1`,
    rootAddress: `${subnet}.254`,
    hosts: hostNames.map((name, i) => ({ name, ns: `${prefix}-${name}`, address: `${subnet}.${11 + i}` })),
    inNs: (ns, argv) => ['ip', 'netns', 'exec', ns, ...argv],
  };
  try {
    ip(['netns', 'add', bridgeNs]);
    nsIp(bridgeNs, ['link', 'set', 'lo', 'up']);
    nsIp(bridgeNs, ['link', 'add', bridge, 'type', 'bridge']);
    nsIp(bridgeNs, ['addr', 'add', `${net.bridgeAddress}/24`, 'dev', bridge]);
    nsIp(bridgeNs, ['link', 'set', bridge, 'up']);
    // <prefix>-rt stays in the root namespace; its peer joins the bridge.
    ip(['link', 'add', `${prefix}-rt`, 'type', 'veth', 'peer', 'name', `${prefix}-rtb`]);
    ip(['link', 'set', `${prefix}-rtb`, 'netns', bridgeNs]);
    nsIp(bridgeNs, ['link', 'set', `${prefix}-rtb`, 'master', bridge, 'up']);
    ip(['addr', 'add', `${net.rootAddress}/24`, 'dev', `${prefix}-rt`]);
    ip(['link', 'set', `${prefix}-rt`, 'up']);
    for (const h of net.hosts) {
      ip(['netns', 'add', h.ns]);
      nsIp(h.ns, ['link', 'set', 'lo', 'up']);
      const [brSide, hostSide] = [`${prefix}-${h.name}a`, `${prefix}-${h.name}b`];
      ip(['link', 'add', brSide, 'type', 'veth', 'peer', 'name', hostSide]);
      ip(['link', 'set', brSide, 'netns', bridgeNs]);
      ip(['link', 'set', hostSide, 'netns', h.ns]);
      nsIp(bridgeNs, ['link', 'set', brSide, 'master', bridge, 'up']);
      nsIp(h.ns, ['addr', 'add', `${h.address}/24`, 'dev', hostSide]);
      nsIp(h.ns, ['link', 'set', hostSide, 'up']);
    }
  } catch (err) {
    await removeTestNetwork(prefix);
    throw err;
  }
  return net;
}
