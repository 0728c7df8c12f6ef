// Runs the whole suite with node:test: lists the test files itself (Node 20 does not expand globs) and
// fails when the runner executed no test at all.
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');

function findTests(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...findTests(path));
    else if (name.endsWith('.test.ts')) out.push(relative(root, path));
  }
  return out;
}

const filter = process.argv.slice(2);
const files = [...findTests(join(root, 'src')), ...findTests(join(root, 'test'))]
  .filter((f) => filter.length === 0 || filter.some((word) => f.includes(word)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filter.join(' ')}`);
  process.exit(1);
}

const summaryFile = join(tmpdir(), `awan-test-summary-${process.pid}.tap`);
const child = spawn(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-reporter-destination=stdout',
    '--test-reporter=tap', `--test-reporter-destination=${summaryFile}`, ...files],
  { cwd: root, stdio: 'inherit' },
);
child.on('exit', async (code, signal) => {
  const { readFileSync, rmSync } = await import('node:fs');
  const tap = readFileSync(summaryFile, 'utf8');
  rmSync(summaryFile, { force: true });
  const summary = tap.split('\n').filter((l) => /^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(l));
  console.log(summary.join('\n'));
  const tests = Number(/^# tests (\d+)/m.exec(tap)?.[1] ?? 0);
  if (tests === 0) {
    console.error('the test runner executed no test');
    process.exit(1);
  }
  process.exit(code ?? (signal ? 1 : 0));
});
