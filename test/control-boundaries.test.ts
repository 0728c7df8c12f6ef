// Control keeps storage in SQL and leaves pools to the agents: no file under src/control imports a driver's
// code (only the driver contract's types) or a file-system call that writes, copies or deletes.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

const root = join(import.meta.dirname, '..', 'src', 'control');
const files = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [join(dir, e.name)] : []));
/** Reads only, and the database's own directory. */
const allowedFs = new Set(['realpath', 'stat', 'open', 'mkdirSync']);

describe('control\'s boundaries', () => {
  it('imports no driver code and no file-system call that changes files', () => {
    const bad: string[] = [];
    for (const f of files(root)) {
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/^import\s+(type\s+)?\{([^}]*)\}\s+from\s+'([^']+)'/gm)) {
        const [, typeOnly, names, from] = m;
        if (from.includes('/drivers/') && !(typeOnly && from.endsWith('/drivers/types.ts'))) bad.push(`${f}: imports ${from}`);
        if (from === 'node:fs' || from === 'node:fs/promises') {
          for (const n of names.split(',').map((x) => x.trim().split(/\s+as\s+/)[0]).filter(Boolean)) {
            if (!allowedFs.has(n)) bad.push(`${f}: uses ${n} from ${from}`);
            if (n === 'mkdirSync' && !f.endsWith(join('store', 'db.ts'))) bad.push(`${f}: makes directories`);
          }
        }
      }
      // Two programs control runs itself: qemu-img to check images, and an admin's power-fence command.
      const mayRun = f.endsWith(join('images', 'qemu-img.ts')) || f.endsWith(join('ha', 'power-fence.ts'));
      if (/from '(node:)?child_process'/.test(text) && !mayRun) bad.push(`${f}: runs programs`);
    }
    assert.deepEqual(bad, []);
  });
});
