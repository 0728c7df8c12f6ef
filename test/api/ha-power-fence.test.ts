// Power fencing with real commands: scripts the test writes into its directory stand for IPMI. A command
// that exits 0 lets HA restart the failed host's VMs without waiting for the margin; one that fails or
// runs past its timeout leaves HA waiting for lease + margin as it does without one. It runs once per
// failure, with the host in its environment, without a shell. Setting it is strict and admin only.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Cluster, type TestHost, startCluster } from '../support/cluster.ts';
import { eventsOf, hostOf, runningOn, vmOf } from '../support/ha.ts';
import { type Link, createLink } from '../support/link.ts';
import { startRoleControl } from '../support/roles.ts';
import { until } from '../until.ts';

function script(dir: string, name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

const lines = (path: string) => (existsSync(path) ? readFileSync(path, 'utf8').trim().split('\n').filter(Boolean) : []);

/** Gone, or a zombie waiting for its parent: either way it runs no more. */
function gone(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
  } catch {
    return true;
  }
}

/** A host reached through a link, running one HA VM of that name, and its power fence set. */
async function fencedHost(c: Cluster, name: string, vm: string, command: string[], timeoutS?: number): Promise<{ host: TestHost; link: Link; vmId: string }> {
  const link = await createLink(c.url);
  const host = await c.addHost(name, undefined, link.url);
  const set = await c.api('PATCH', `/api/v1/hosts/${name}`, { powerFence: { command, ...(timeoutS ? { timeoutS } : {}) } });
  assert.equal(set.status, 200, JSON.stringify(set.body));
  const r = await c.api('POST', '/api/v1/vms', { name: vm, cpus: 1, memoryMiB: 256, ha: true });
  assert.equal((await c.waitTask(r.body.task.id)).state, 'succeeded');
  assert.equal((await vmOf(c, vm)).hostId, host.agent.hostId, `${vm} runs on ${name}`);
  return { host, link, vmId: r.body.vm.id };
}

/** Cuts the link and waits for control to declare the host failed. */
async function fail(c: Cluster, link: Link, name: string) {
  link.cut();
  return until(async () => {
    const h = await hostOf(c, name);
    return h.state === 'failed' ? h : undefined;
  }, { what: `${name} failed`, timeoutMs: 15_000 });
}

const runningOff = (c: Cluster, vm: string, hostId: string | undefined, timeoutMs: number) =>
  until(async () => {
    const v = await vmOf(c, vm);
    return v.phase === 'running' && v.hostId !== hostId ? v : undefined;
  }, { what: `${vm} running elsewhere`, timeoutMs });

/** One describe's cluster on a database file (control can restart), with a lease of 1 s and `marginMs`. */
function fenceCluster(marginMs: number): { c: Cluster; link?: Link } {
  const dir = mkdtempSync(join(tmpdir(), 'awan-fence-'));
  const t = {} as { c: Cluster; link?: Link };
  before(async () => {
    t.c = await startCluster({ db: `sqlite:${join(dir, 'awan.db')}`, control: { hostLeaseMs: 1000, failoverMarginMs: marginMs, haHostFailures: 0 } });
  });
  after(async () => {
    await t.c?.close();
    await t.link?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return t;
}

describe('a failed host whose power fence works', () => {
  const marginMs = 20_000;
  const t = fenceCluster(marginMs);

  it('is powered off once, with its name in the environment, and its HA VM restarts without waiting for the margin', async () => {
    const { c } = t;
    const marker = join(c.dir, 'fenced.txt');
    const off = script(c.dir, 'power-off.sh', `printf 'id=%s name=%s address=%s path=%s\\n' "$AWAN_HOST_ID" "$AWAN_HOST_NAME" "$AWAN_HOST_ADDRESS" "$1" >> "$1"`);
    const made = await fencedHost(c, 'host-1', 'svc', [off, marker]);
    t.link = made.link;
    await c.addHost('host-2');
    const failed = await fail(c, made.link, 'host-1');
    const moved = await runningOff(c, 'svc', made.host.agent.hostId, 10_000);
    // The script switches nothing off here: the simulated host's own fence stops its copy (at most a moment later).
    await until(async () => JSON.stringify(await runningOn(c, moved.id)) === '["host-2"]', { what: 'svc running on host-2 alone' });

    const [fenced] = await eventsOf(c, 'host.power-fenced', made.host.agent.hostId);
    assert.ok(fenced, 'a host.power-fenced event');
    assert.equal(fenced.data?.exitCode, 0);
    assert.match(fenced.message, /host host-1 was powered off by .*power-off\.sh/);
    assert.deepEqual(lines(marker), [`id=${made.host.agent.hostId} name=host-1 address=host-1 path=${marker}`]);
    const [restart] = await eventsOf(c, 'vm.ha.restarting', made.vmId);
    assert.ok(Date.parse(restart.at) < Date.parse(failed.leaseExpiresAt) + marginMs, `restarted at ${restart.at}, before lease + margin`);
    assert.ok(Date.parse(restart.at) >= Date.parse(fenced.at), 'after the host was off');
    assert.equal((await hostOf(c, 'host-1')).poweredOff, true, 'the host shows it was switched off');
  });
});

describe('a host switched off by its power fence, when control changes hands', () => {
  const marginMs = 30_000;
  const t = fenceCluster(marginMs);

  it('is not switched off again by the new leader, which restarts its HA VM without waiting for the margin', async () => {
    const { c } = t;
    const marker = join(c.dir, 'fenced.txt');
    const off = script(c.dir, 'power-off.sh', `echo off >> "$1"`);
    // The only host: its VM has nowhere to go while control changes hands.
    const made = await fencedHost(c, 'host-1', 'solo', [off, marker]);
    t.link = made.link;
    await fail(c, made.link, 'host-1');
    await until(async () => (await hostOf(c, 'host-1')).poweredOff === true, { what: 'host-1 recorded as off', timeoutMs: 10_000 });
    assert.equal(lines(marker).length, 1);

    await c.restartControl();
    await until(async () => (await hostOf(c, 'host-1')).state === 'failed', { what: 'the new leader sees host-1 failed', timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(lines(marker).length, 1, 'the new leader did not run the command again');
    assert.equal((await hostOf(c, 'host-1')).poweredOff, true);

    const roomAt = Date.now();
    await c.addHost('host-2');
    await runningOff(c, 'solo', made.host.agent.hostId, 15_000);
    assert.ok(Date.now() - roomAt < marginMs, 'restarted as soon as there was room, not after the margin');
    assert.equal((await eventsOf(c, 'host.power-fenced', made.host.agent.hostId)).length, 1);
  });
});

describe('a failed host whose power fence fails or hangs', () => {
  const marginMs = 2500;
  let c: Cluster;
  const links: Link[] = [];
  let failing: { host: TestHost; link: Link; vmId: string };
  let hanging: { host: TestHost; link: Link; vmId: string };
  let marker: string;
  let pids: string;
  before(async () => {
    c = await startCluster({ control: { hostLeaseMs: 1000, failoverMarginMs: marginMs, haHostFailures: 0 } });
    marker = join(c.dir, 'tried.txt');
    pids = join(c.dir, 'pids.txt');
    const refuse = script(c.dir, 'refuse.sh', `echo tried >> "$1"\necho "no BMC answers at $AWAN_HOST_ADDRESS" >&2\nexit 1`);
    const hang = script(c.dir, 'hang.sh', `echo $$ >> "$1"\nsleep 60 &\necho $! >> "$1"\nwait`);
    failing = await fencedHost(c, 'host-1', 'svc-a', [refuse, marker]);
    hanging = await fencedHost(c, 'host-2', 'svc-b', [hang, pids], 1);
    links.push(failing.link, hanging.link);
    await c.addHost('host-3');
  });
  after(async () => {
    await c?.close();
    for (const l of links) await l.close();
  });

  it('records the exit code and stderr, runs the command once for the failure, and restarts after lease + margin', async () => {
    const failed = await fail(c, failing.link, 'host-1');
    const moved = await runningOff(c, 'svc-a', failing.host.agent.hostId, 15_000);
    const [event] = await eventsOf(c, 'host.power-fence-failed', failing.host.agent.hostId);
    assert.ok(event, 'a host.power-fence-failed event');
    assert.equal(event.data?.exitCode, 1);
    assert.equal(event.data?.timedOut, false);
    assert.match(String(event.data?.stderrTail), /no BMC answers at host-1/);
    assert.match(event.message, /refuse\.sh exited with 1 \(no BMC answers at host-1\); its HA VMs wait for the lease margin/);
    const [restart] = await eventsOf(c, 'vm.ha.restarting', failing.vmId);
    assert.ok(Date.parse(restart.at) >= Date.parse(failed.leaseExpiresAt) + marginMs, `restarted at ${restart.at}, not before lease + margin`);
    assert.deepEqual(lines(marker), ['tried'], 'once for the failure, though HA passed over the host several times');
    assert.deepEqual(await runningOn(c, moved.id), [c.hosts.find((h) => h.agent.hostId === moved.hostId)!.name]);
  });

  it('kills a command that runs past its timeout, with what it started, and restarts after lease + margin', async () => {
    const failed = await fail(c, hanging.link, 'host-2');
    const [event] = await until(async () => {
      const e = await eventsOf(c, 'host.power-fence-failed', hanging.host.agent.hostId);
      return e.length ? e : undefined;
    }, { what: 'the hanging power fence given up', timeoutMs: 10_000 });
    assert.equal(event.data?.timedOut, true);
    assert.match(event.message, /hang\.sh timed out after 1 s/);
    const started = lines(pids).map(Number);
    assert.equal(started.length, 2, 'the script and its sleep');
    await until(() => started.every(gone), { what: 'the script and its sleep killed' });
    const moved = await runningOff(c, 'svc-b', hanging.host.agent.hostId, 15_000);
    const [restart] = await eventsOf(c, 'vm.ha.restarting', hanging.vmId);
    assert.ok(Date.parse(restart.at) >= Date.parse(failed.leaseExpiresAt) + marginMs, `restarted at ${restart.at}, not before lease + margin`);
    assert.equal(moved.hostId, c.hosts.find((h) => h.name === 'host-3')!.agent.hostId);
  });
});

describe('setting a power fence', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ hosts: 1 });
  });
  after(async () => { await c?.close(); });

  it('takes an argv of strings naming a program by absolute path, shows it, and clears it with null', async () => {
    const set = await c.api('PATCH', '/api/v1/hosts/host-1', { powerFence: { command: ['/usr/bin/ipmitool', '-H', 'bmc-1', 'power', 'off'] } });
    assert.equal(set.status, 200, JSON.stringify(set.body));
    assert.deepEqual(set.body.powerFence, { command: ['/usr/bin/ipmitool', '-H', 'bmc-1', 'power', 'off'], timeoutS: 30 });
    assert.deepEqual((await hostOf(c, 'host-1')).powerFence, set.body.powerFence);
    const cleared = await c.api('PATCH', '/api/v1/hosts/host-1', { powerFence: null });
    assert.equal(cleared.status, 200);
    assert.equal(cleared.body.powerFence, null);
  });

  it('refuses anything else with 400, a code and a message', async () => {
    const bad: [unknown, RegExp][] = [
      [{ command: 'ipmitool power off' }, /powerFence/],
      [{ command: [] }, /powerFence/],
      [{ command: ['/bin/true', 5] }, /powerFence/],
      [{ command: ['/bin/true'], timeoutS: 0 }, /timeoutS/],
      [{ command: ['/bin/true'], timeoutS: 1.5 }, /timeoutS/],
      [{ command: ['/bin/true'], shell: true }, /shell/],
      [{ command: ['ipmitool', 'power', 'off'] }, /must be an absolute path/],
      ['/bin/true', /powerFence/],
    ];
    for (const [powerFence, message] of bad) {
      const r = await c.api('PATCH', '/api/v1/hosts/host-1', { powerFence });
      assert.equal(r.status, 400, `${JSON.stringify(powerFence)}: ${JSON.stringify(r.body)}`);
      assert.ok(['VALIDATION_FAILED', 'BAD_REQUEST'].includes(r.body.error.code), JSON.stringify(r.body));
      assert.match(r.body.error.message, message, JSON.stringify(r.body));
    }
    assert.equal((await hostOf(c, 'host-1')).powerFence, null, 'nothing was stored');
  });

  it('is described in the OpenAPI document, with the quarantined state', async () => {
    const doc = (await (await fetch(`${c.url}/api/v1/openapi.json`)).json()) as any;
    const text = JSON.stringify(doc.paths['/api/v1/hosts/{id}']);
    assert.match(text, /"powerFence"/);
    assert.match(text, /"timeoutS"/);
    assert.match(text, /"quarantined"/);
    assert.match(text, /"quarantinedAt"/);
    assert.match(text, /"recentFailures"/);
  });
});

describe('who may set a power fence', () => {
  it('is an admin: an operator or a viewer gets 403', async () => {
    const rc = await startRoleControl();
    try {
      for (const role of ['operator', 'viewer'] as const) {
        const r = await rc.control.app.inject({
          method: 'PATCH', url: '/api/v1/hosts/any', headers: { authorization: `Bearer ${await rc.tokenFor(role)}` }, payload: { powerFence: { command: ['/bin/true'] } },
        });
        assert.equal(r.statusCode, 403, `${role}: ${r.body}`);
        assert.equal(r.json().error.code, 'FORBIDDEN');
      }
    } finally {
      await rc.close();
    }
  });
});
