// The leader lease on PostgreSQL: one holder at a time, a new epoch for each, and a leader that cannot
// renew stops leading before another replica can take the lease.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createLeadership, type Leadership } from '../../src/control/leader/elector.ts';
import { createLeaseStore, type LeaseStore } from '../../src/control/leader/lease.ts';
import { openStore, type Store } from '../../src/control/store/db.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { freshPostgres } from '../support/postgres.ts';
import { until } from '../until.ts';

const log = createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent');
const config = { leaseMs: 1200, renewMs: 150, retryMs: 150, renewDeadlineMs: 700 };

describe('leader lease on PostgreSQL', () => {
  let pg: Awaited<ReturnType<typeof freshPostgres>> | undefined;
  let store: Store;
  const running: Leadership[] = [];
  before(async () => {
    pg = await freshPostgres();
    store = await openStore(pg.url);
  });
  after(async () => {
    for (const l of running) await l.stop().catch(() => undefined);
    await store?.close();
    await pg?.drop();
  });

  const elect = (name: string, history: string[], leases: LeaseStore = createLeaseStore(store.db, 'postgres')) => {
    const l = createLeadership({ store: leases, single: false, url: () => `http://${name}`, log, config });
    running.push(l);
    return l.start({
      onLead: async (epoch) => void history.push(`${name} leads ${epoch}`),
      onLose: async () => void history.push(`${name} stops`),
    }).then(() => l);
  };

  it('gives the lease to one replica, and to another only after the first stopped leading', async () => {
    const history: string[] = [];
    const real = createLeaseStore(store.db, 'postgres');
    let frozen = false;
    // A's database stops answering its renewals (a partition, a stuck connection): the lease expires there.
    const stuck: LeaseStore = { ...real, renew: (...args) => (frozen ? new Promise<boolean>(() => undefined) : real.renew(...args)) };
    const a = await elect('a', history, stuck);
    const b = await elect('b', history);
    assert.equal(a.isLeader, true);
    assert.equal(b.isLeader, false);
    const first = a.epoch;
    // B keeps trying and keeps failing while A renews.
    await new Promise((r) => setTimeout(r, config.leaseMs * 2));
    assert.equal(b.isLeader, false, 'the follower cannot take a renewed lease');
    assert.equal((await b.leader())?.id, a.replicaId);

    frozen = true;
    await until(() => b.isLeader, { timeoutMs: 10_000, what: 'b leads' });
    assert.equal(a.isLeader, false);
    assert.ok(b.epoch > first, 'a new leader has a higher epoch');
    assert.deepEqual(history, [`a leads ${first}`, 'a stops', `b leads ${b.epoch}`], 'a stopped before b started');
    assert.equal((await b.leader())?.id, b.replicaId);
  });

  it('hands the lease over at once when the leader stops cleanly', async () => {
    for (const l of running.splice(0)) await l.stop();
    const history: string[] = [];
    const c = await elect('c', history);
    const d = await elect('d', history);
    assert.equal(c.isLeader, true);
    await c.stop();
    await until(() => d.isLeader, { what: 'd leads' });
    const replicas = await d.replicas();
    assert.deepEqual(replicas.map((r) => r.url), ['http://d'], 'a stopped replica leaves the replicas table');
  });

  it('refuses the lease to two replicas taking it at the same instant', async () => {
    for (const l of running.splice(0)) await l.stop();
    const leases = createLeaseStore(store.db, 'postgres');
    const before = await leases.epoch();
    const results = await Promise.all(['x', 'y', 'z'].map((id) => leases.acquire(id, `http://${id}`, 60_000)));
    assert.equal(results.filter(Boolean).length, 1, JSON.stringify(results));
    assert.equal(results.find(Boolean)!.epoch, before + 1);
  });
});
