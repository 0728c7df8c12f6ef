// The README's quick start, run as the README writes it: the demo in a child process, then every CLI line
// of the section's sh blocks in its own child process, each checked for what a user would see.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { childEnv, type Demo, root, type Run, runProcess, startDemo, stopAll } from './support/demo-process.ts';
import { until } from './until.ts';

/** The README's demo listens here; the test's demo listens on a free port instead. */
const README_URL = 'http://127.0.0.1:8080';

/** Every line of the sh blocks of the README's "Quick start" section. */
function quickStartLines(readme: string): string[] {
  const section = /^## Quick start\n([\s\S]*?)(?=^## )/m.exec(readme)?.[1];
  assert.ok(section, 'README.md has a "## Quick start" section');
  const blocks = [...section.matchAll(/^```sh\n([\s\S]*?)^```/gm)].map((m) => m[1]);
  assert.ok(blocks.length > 0, 'the quick start has sh blocks');
  return blocks.flatMap((b) => b.split('\n')).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

interface VmJson { id: string; name: string; phase: string; hostId: string | null }
interface HostJson { id: string; name: string; state: string }

describe('README quick start', () => {
  const lines = quickStartLines(readFileSync(join(root, 'README.md'), 'utf8'));
  let dir: string;
  let demo: Demo;
  let token: string;
  let hostCount: number;

  async function api<T>(path: string): Promise<{ status: number; body: T }> {
    const res = await fetch(demo.url + path, { headers: { authorization: `Bearer ${token}` } });
    const body = (await res.json()) as T;
    assert.equal(res.status, 200, `GET ${path}: ${JSON.stringify(body)}`);
    return { status: res.status, body };
  }
  const vms = async () => (await api<{ items: VmJson[] }>('/api/v1/vms?limit=1000')).body.items;
  const hosts = async () => (await api<{ items: HostJson[] }>('/api/v1/hosts')).body.items;
  const hostNamed = async (name: string) => {
    const h = (await hosts()).find((x) => x.name === name);
    assert.ok(h, `host ${name} exists`);
    return h;
  };
  const vmNamed = async (name: string) => (await vms()).find((v) => v.name === name);

  /**
   * What each kind of command must leave behind, seen through the API. `before` runs first and hands its
   * result to `after`; conditions are waited for, so a command without --wait is checked fairly too.
   */
  const checks: { pattern: RegExp; before?: (m: RegExpExecArray) => Promise<unknown>; after: (m: RegExpExecArray, run: Run, before: unknown) => Promise<void> }[] = [
    {
      pattern: /^login\b/,
      after: async (_m, run) => assert.match(run.stdout, new RegExp(`logged in to ${demo.url} as admin`)),
    },
    {
      pattern: /^host list\b/,
      after: async (_m, run) => {
        for (let i = 1; i <= hostCount; i++) assert.match(run.stdout, new RegExp(`^sim-host-${i}\\s+ready\\b`, 'm'));
      },
    },
    {
      pattern: /^vm create (\S+)/,
      after: async (m) => { await until(async () => (await vmNamed(m[1]))?.phase === 'running', { timeoutMs: 30_000, what: `${m[1]} running` }); },
    },
    {
      pattern: /^vm list\b/,
      after: async (_m, run) => {
        for (const v of await vms()) assert.match(run.stdout, new RegExp(`^${v.name}\\s`, 'm'));
      },
    },
    {
      pattern: /^vm migrate (\S+)/,
      before: async (m) => (await vmNamed(m[1]))?.hostId,
      after: async (m, _run, from) => {
        const moved = await until(async () => {
          const v = await vmNamed(m[1]);
          return v?.phase === 'running' && v.hostId !== from ? v : undefined;
        }, { timeoutMs: 30_000, what: `${m[1]} running on another host` });
        assert.ok(moved.hostId);
      },
    },
    {
      pattern: /^host drain (\S+)/,
      before: async (m) => {
        const host = await hostNamed(m[1]);
        return (await vms()).filter((v) => v.hostId === host.id).map((v) => v.name);
      },
      after: async (m, _run, movedNames) => {
        const host = await hostNamed(m[1]);
        assert.equal(host.state, 'maintenance');
        await until(async () => {
          const all = await vms();
          return all.every((v) => v.hostId !== host.id) && (movedNames as string[]).every((n) => all.find((v) => v.name === n)?.phase === 'running');
        }, { timeoutMs: 30_000, what: `every VM off ${m[1]} and running` });
      },
    },
    {
      pattern: /^host activate (\S+)/,
      after: async (m) => { await until(async () => (await hostNamed(m[1])).state === 'ready', { what: `${m[1]} ready` }); },
    },
    {
      pattern: /^vm stop (\S+)/,
      after: async (m) => { await until(async () => (await vmNamed(m[1]))?.phase === 'stopped', { timeoutMs: 30_000, what: `${m[1]} stopped` }); },
    },
    {
      pattern: /^vm delete (\S+)/,
      after: async (m) => { await until(async () => (await vmNamed(m[1])) === undefined, { timeoutMs: 30_000, what: `${m[1]} gone` }); },
    },
  ];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'awan-quickstart-'));
    // `npm install && npm run demo`: the suite runs in an installed checkout and must not touch node_modules,
    // so only the demo part runs, with the README's own demo arguments plus a temporary --data-dir and a free
    // --port (the only rewrite; the CLI lines get the URL below).
    const demoLines = lines.filter((l) => /\bnpm run demo\b/.test(l));
    assert.equal(demoLines.length, 1, `one line starts the demo: ${JSON.stringify(demoLines)}`);
    const m = /^(?:npm install && )?npm run demo(?: -- (.*))?$/.exec(demoLines[0]);
    assert.ok(m, `the demo line is ${demoLines[0]}`);
    const args = m[1]?.split(/\s+/) ?? [];
    assert.ok(!args.includes('--port') && !args.includes('--data-dir'), 'the test chooses the port and data dir');
    hostCount = Number(args[args.indexOf('--hosts') + 1] ?? 3) || 3;
    // A newcomer has no AWAN_ADMIN_PASSWORD: the demo generates one and its banner prints it.
    demo = await startDemo([...args, '--port', '0', '--data-dir', join(dir, 'demo')], childEnv(join(dir, 'home')));
    const login = await fetch(`${demo.url}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: demo.loginLine }) });
    assert.equal(login.status, 200, `the password the banner printed logs in: ${demo.loginLine}`);
    token = ((await login.json()) as { token: string }).token;
  });

  after(async () => {
    await demo?.stop();
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs every command of the quick start, and each does what it says', async () => {
    const commands = lines.filter((l) => !/\bnpm run demo\b/.test(l));
    assert.ok(commands.length > 0);
    for (const line of commands) {
      const m = /^npm run awan -- (.*)$/.exec(line);
      assert.ok(m, `the quick start has a line this test does not know how to run: ${line}`);
      // The rewrite: the README's URL becomes the test demo's. Lines without --server rely on the default
      // server, the demo's default port; AWAN_SERVER points them at the test's demo instead.
      const shellLine = line.replaceAll(README_URL, demo.url);
      const args = m[1].replaceAll(README_URL, demo.url);
      const check = checks.find((c) => c.pattern.test(args));
      const match = check?.pattern.exec(args) ?? undefined;
      const state = check?.before && match ? await check.before(match) : undefined;
      const env = childEnv(join(dir, 'home'), { AWAN_SERVER: demo.url, npm_config_update_notifier: 'false' });
      // login asks for the password; with no terminal it reads it from standard input.
      const input = /^login\b/.test(args) ? `${demo.loginLine}\n` : '';
      const run = await runProcess('sh', ['-c', shellLine], { env, input });
      assert.equal(run.code, 0, `${line}\nexited ${run.code}:\n${run.stdout}${run.stderr}`);
      if (check && match) await check.after(match, run, state);
    }
  });
});
