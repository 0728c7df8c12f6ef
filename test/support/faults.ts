// Faults for end-to-end tests on a TestNetwork: partitions, flapping links, hung and killed processes. Each fault
// has an id; restore(id) undoes it and clear() undoes every one still in place, so a failed test leaves none.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { TestNetwork } from './netns.ts';

/**
 * A MAC address no interface has. A permanent neighbour entry pointing at it makes the kernel send the packets
 * (the bridge floods them, nobody takes them): they vanish without an error, as in a real partition, while
 * every other path over the same link stays up. The machine has no nft/iptables and no tc classifiers, and a
 * blackhole route would fail the sender's calls at once (EINVAL) instead of letting them time out.
 */
const NOWHERE_MAC = '02:00:00:00:de:ad';
const MAX_FLAPS = 100;
const MAX_FLAP_PHASE_MS = 60_000;

/** `control` is the bridge namespace at the bridge address, where the e2e tests run `awan serve`. */
export type Peer = 'control' | string;

export type FaultKind = 'cut' | 'links-down' | 'hang';

export interface FaultInfo {
  id: string;
  kind: FaultKind;
  /** What it applies to: `h1 x control,h2`, `h1`, or the pids. */
  target: string;
}

export interface FlapOptions {
  /** How many times the path goes down (and comes back), at most 100. */
  times: number;
  downMs: number;
  upMs: number;
  /** `control` (default): cutFromControl; `all`: cutAllLinks. */
  scope?: 'control' | 'all';
  signal?: AbortSignal;
}

export interface Faults {
  /** Drops every packet between `host` and control, both ways; the host still reaches its peers. */
  cutFromControl(host: string): string;
  /** Drops every packet between `host` and each of `peers` (`control` or host names), both ways. */
  cutPaths(host: string, peers: Peer[]): string;
  /** Takes the host's only link down (its veth into the bridge): it reaches nobody, nobody reaches it. */
  cutAllLinks(host: string): string;
  /** Cuts, waits, restores, waits, `times` times; ends restored even when aborted or failing. */
  flap(host: string, o: FlapOptions): Promise<void>;
  /** SIGSTOPs the processes; restore(id) SIGCONTs them. */
  hang(pids: number | number[]): string;
  /** SIGKILLs, by pid, every process in the host's namespace and waits until they are gone; returns the pids. */
  killHost(host: string): Promise<number[]>;
  /** Pids of the processes in the host's namespace right now. */
  pidsOf(host: string): number[];
  /** Undoes one fault; undoing one already undone does nothing. */
  restore(id: string): void;
  active(): FaultInfo[];
  /** Undoes every fault still in place (for after()). */
  clear(): void;
}

function run(args: string[]): string {
  try {
    return execFileSync(args[0], args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

function alive(pid: number): boolean {
  try {
    return !/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** One end of a path: a namespace, its address on the network, and the device that address is reached by. */
interface End {
  ns: string;
  address: string;
  dev: string;
}

export function createFaults(net: TestNetwork): Faults {
  const faults = new Map<string, FaultInfo & { undo: () => void }>();
  /** How many cuts hold each neighbour entry (`ns dev address`), so overlapping cuts undo in any order. */
  const holds = new Map<string, number>();
  const downs = new Map<string, number>();
  let next = 1;

  const hostOf = (name: string) => {
    const h = net.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host ${name} in network ${net.prefix} (hosts: ${net.hosts.map((x) => x.name).join(', ')})`);
    return h;
  };
  const endOf = (peer: Peer): End => {
    if (peer === 'control') return { ns: net.bridgeNs, address: net.bridgeAddress, dev: `${net.prefix}-br` };
    const h = hostOf(peer);
    return { ns: h.ns, address: h.address, dev: `${net.prefix}-${h.name}b` };
  };

  /** From `from`, packets to `to` go nowhere. */
  const blind = (from: End, to: End) => {
    const key = `${from.ns} ${from.dev} ${to.address}`;
    const n = holds.get(key) ?? 0;
    if (n === 0) run(['ip', '-n', from.ns, 'neigh', 'replace', to.address, 'lladdr', NOWHERE_MAC, 'dev', from.dev, 'nud', 'permanent']);
    holds.set(key, n + 1);
  };
  const unblind = (from: End, to: End) => {
    const key = `${from.ns} ${from.dev} ${to.address}`;
    const n = holds.get(key) ?? 0;
    if (n > 1) return void holds.set(key, n - 1);
    holds.delete(key);
    // The next packet resolves the real address again by ARP.
    try {
      run(['ip', '-n', from.ns, 'neigh', 'del', to.address, 'dev', from.dev]);
    } catch {
      // the namespace is gone already
    }
  };

  const add = (kind: FaultKind, target: string, undo: () => void): string => {
    const id = `${kind}-${next++}`;
    faults.set(id, { id, kind, target, undo });
    return id;
  };

  const f: Faults = {
    cutFromControl: (host) => f.cutPaths(host, ['control']),

    cutPaths(host, peers) {
      const a = endOf(host);
      const ends = peers.map(endOf);
      if (ends.some((e) => e.ns === a.ns)) throw new Error(`${host} cannot be cut from itself`);
      const done: End[] = [];
      try {
        for (const b of ends) {
          blind(a, b);
          done.push(b);
          try {
            blind(b, a);
          } catch (err) {
            unblind(a, b);
            done.pop();
            throw err;
          }
        }
      } catch (err) {
        for (const b of done) {
          unblind(a, b);
          unblind(b, a);
        }
        throw err;
      }
      return add('cut', `${host} x ${peers.join(',')}`, () => {
        for (const b of ends) {
          unblind(a, b);
          unblind(b, a);
        }
      });
    },

    cutAllLinks(host) {
      const h = hostOf(host);
      const dev = `${net.prefix}-${h.name}b`;
      const n = downs.get(dev) ?? 0;
      if (n === 0) run(['ip', '-n', h.ns, 'link', 'set', dev, 'down']);
      downs.set(dev, n + 1);
      return add('links-down', host, () => {
        const left = (downs.get(dev) ?? 1) - 1;
        if (left > 0) return void downs.set(dev, left);
        downs.delete(dev);
        try {
          run(['ip', '-n', h.ns, 'link', 'set', dev, 'up']);
        } catch {
          // the namespace is gone already
        }
      });
    },

    async flap(host, o) {
      if (!Number.isInteger(o.times) || o.times < 1 || o.times > MAX_FLAPS) throw new Error(`flap: times must be 1..${MAX_FLAPS}, not ${o.times}`);
      for (const ms of [o.downMs, o.upMs]) {
        if (!Number.isFinite(ms) || ms < 0 || ms > MAX_FLAP_PHASE_MS) throw new Error(`flap: durations must be 0..${MAX_FLAP_PHASE_MS} ms, not ${ms}`);
      }
      for (let i = 0; i < o.times; i++) {
        const id = o.scope === 'all' ? f.cutAllLinks(host) : f.cutFromControl(host);
        try {
          await sleep(o.downMs, o.signal);
        } finally {
          f.restore(id);
        }
        if (i < o.times - 1) await sleep(o.upMs, o.signal);
      }
    },

    hang(pids) {
      const list = (Array.isArray(pids) ? pids : [pids]).filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
      if (list.length === 0) throw new Error('hang: no pid to stop');
      for (const pid of list) signal(pid, 'SIGSTOP');
      return add('hang', list.join(','), () => list.forEach((pid) => signal(pid, 'SIGCONT')));
    },

    pidsOf(host) {
      const h = hostOf(host);
      return run(['ip', 'netns', 'pids', h.ns]).split('\n').map(Number).filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
    },

    async killHost(host) {
      const killed: number[] = [];
      // Children forked while the first ones die are in the namespace too: look again until it is empty.
      for (let round = 0; round < 10; round++) {
        const pids = f.pidsOf(host).filter(alive);
        if (pids.length === 0) break;
        for (const pid of pids) signal(pid, 'SIGKILL');
        killed.push(...pids);
        const deadline = Date.now() + 10_000;
        while (pids.some(alive) && Date.now() < deadline) await sleep(20);
      }
      const left = f.pidsOf(host).filter(alive);
      if (left.length) throw new Error(`killHost ${host}: processes ${left.join(', ')} are still there`);
      return [...new Set(killed)];
    },

    restore(id) {
      const fault = faults.get(id);
      if (!fault) return;
      faults.delete(id);
      fault.undo();
    },

    active: () => [...faults.values()].map(({ id, kind, target }) => ({ id, kind, target })),

    clear() {
      const errors: unknown[] = [];
      for (const id of [...faults.keys()].reverse()) {
        try {
          f.restore(id);
        } catch (err) {
          errors.push(err);
        }
      }
      if (errors.length) throw new AggregateError(errors, `${errors.length} fault(s) could not be undone`);
    },
  };
  return f;
}
