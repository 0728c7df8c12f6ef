// A host's storage: its own local pool and the shared pools control names, each opened once. The qemu
// driver's pools are directories of files; the simulator's live in memory (one MemoryStorage may be shared
// by every simulated host of a process, as a shared directory is by real ones).
import { join } from 'node:path';
import { createFilePool } from './file-pool.ts';
import { type MemoryPool, createMemoryPool } from './memory-pool.ts';
import { PoolError, type PoolRef, type PoolStats, type StoragePool } from './pool.ts';
import type { MemoryLender } from '../memory/lender.ts';
import { createSimLender } from '../memory/sim-lender.ts';
import { createTmpfsLender } from '../memory/tmpfs-lender.ts';

/** What the agent reports of each pool it reaches. */
export interface PoolReport extends PoolRef {
  capacityMiB?: number;
  freeMiB?: number;
  /** Why the pool cannot be used from this host. */
  error?: string;
}

export interface HostStorage {
  readonly local: StoragePool;
  /** RAM this host lends to others' VMs (memoryExport). */
  readonly memory: MemoryLender;
  /** The pool a command names: this host's own local pool, or a shared one. */
  open(ref: PoolRef): StoragePool;
  /** Stats of the local pool and of every shared pool named so far. */
  report(shared: PoolRef[]): Promise<PoolReport[]>;
  close(): Promise<void>;
}

/** The pool directory of a host's own disks; the qemu driver resolves local disks against the same one. */
export const localPoolPath = (dataDir: string) => join(dataDir, 'local-pool');

type PoolFactory = (ref: PoolRef) => StoragePool;

function hostStorage(dataDir: string, make: PoolFactory, memory: MemoryLender, onClose: (pools: StoragePool[]) => Promise<void>): HostStorage {
  const local = make({ type: 'local', path: localPoolPath(dataDir) });
  const shared = new Map<string, StoragePool>();
  const open = (ref: PoolRef): StoragePool => {
    if (ref.type === 'local') {
      if (ref.path !== local.path) throw new PoolError('POOL_NOT_FOUND', `local pool ${ref.path} is not this host's (${local.path})`);
      return local;
    }
    let p = shared.get(ref.path);
    if (!p) shared.set(ref.path, (p = make(ref)));
    return p;
  };
  const stat = async (pool: StoragePool): Promise<PoolReport> => {
    try {
      const s: PoolStats = await pool.stats();
      return { type: pool.type, path: pool.path, ...s };
    } catch (err) {
      return { type: pool.type, path: pool.path, error: err instanceof Error ? err.message : String(err) };
    }
  };
  return {
    local,
    memory,
    open,
    async report(refs) {
      return Promise.all([local, ...refs.filter((r) => r.type === 'shared').map(open)].map(stat));
    },
    close: () => onClose([local, ...shared.values()]),
  };
}

export function createFileStorage(dataDir: string, opts: { storageDaemon?: string; shmDir?: string } = {}): HostStorage {
  const memory = createTmpfsLender({ dataDir, ...opts });
  return hostStorage(dataDir, (ref) => createFilePool({ ...ref, storageDaemon: opts.storageDaemon }), memory, async (pools) => {
    await Promise.all(pools.map((p) => p.close()));
  });
}

/** In-memory pools by path: every simulated host given the same one sees the same shared pools. */
export function createMemoryStorage(opts: { capacityMiB?: number } = {}) {
  const pools = new Map<string, MemoryPool>();
  // By data dir, as tmpfs loans are: an agent made again for the same host finds its loans.
  const lenders = new Map<string, MemoryLender>();
  const make = (ref: PoolRef): MemoryPool => {
    let p = pools.get(ref.path);
    if (!p) pools.set(ref.path, (p = createMemoryPool({ ...ref, capacityMiB: opts.capacityMiB })));
    return p;
  };
  return {
    pool: (path: string) => pools.get(path),
    /** The memory a simulated host lends (tests), by its data dir. */
    lender: (dataDir: string) => lenders.get(dataDir),
    forHost: (dataDir: string): HostStorage => {
      let lender = lenders.get(dataDir);
      if (!lender) lenders.set(dataDir, (lender = createSimLender()));
      return hostStorage(dataDir, make, lender, async () => undefined);
    },
  };
}
export type MemoryStorage = ReturnType<typeof createMemoryStorage>;

export type { PoolRef, StoragePool } from './pool.ts';
