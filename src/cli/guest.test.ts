// The test guest's build runs beside the event loop: agents in the same process keep sending heartbeats.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ensureGuest } from './guest.ts';

const root = mkdtempSync(join(tmpdir(), 'awan-guest-'));
after(() => rmSync(root, { recursive: true, force: true }));

/**
 * Stands in for scripts/build-guest: it finishes only once this process has seen it running (the file
 * `started`) and answered (the file `go`) from a timer, which a build that blocks the event loop never lets
 * happen; it then gives up after 30 s and the build fails.
 */
function standInBuild(): { script: string; started: string; go: string } {
  const started = join(root, 'started');
  const go = join(root, 'go');
  const script = join(root, 'build-guest');
  writeFileSync(
    script,
    `set -e
touch '${started}'
for i in $(seq 300); do [ -e '${go}' ] && break; sleep 0.1; done
[ -e '${go}' ] || { echo "no answer from the caller: its event loop was blocked" >&2; exit 1; }
mkdir -p "$AWAN_GUEST_DIR"
echo kernel >"$AWAN_GUEST_DIR/vmlinuz"
echo initrd >"$AWAN_GUEST_DIR/initrd.img"
cat >"$AWAN_GUEST_DIR/guest.json" <<JSON
{ "version": 4, "kernelPath": "$AWAN_GUEST_DIR/vmlinuz", "initrdPath": "$AWAN_GUEST_DIR/initrd.img", "cmdline": "console=ttyS0" }
JSON
`,
  );
  return { script, started, go };
}

describe('ensureGuest', () => {
  it('builds a missing guest while timers keep running, and finds it afterwards without building', async () => {
    const { script, started, go } = standInBuild();
    const dir = join(root, 'guest');
    let answered = false;
    const timer = setInterval(() => {
      if (!answered && existsSync(started)) {
        writeFileSync(go, '');
        answered = true;
      }
    }, 20);
    try {
      const guest = await ensureGuest({ dir, buildScript: script, stdio: 'ignore' });
      assert.deepEqual(guest, { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), cmdline: 'console=ttyS0' });
    } finally {
      clearInterval(timer);
    }
    assert.equal(answered, true);
    // Built once: the next call reads what is there (a build script that fails would say otherwise).
    const failing = join(root, 'fails');
    writeFileSync(failing, 'exit 1\n');
    assert.equal((await ensureGuest({ dir, buildScript: failing, stdio: 'ignore' })).kernel, join(dir, 'vmlinuz'));
  });

  it('says so when the build fails', async () => {
    const failing = join(root, 'fails-too');
    writeFileSync(failing, 'echo "apt-get: no network" >&2; exit 3\n');
    await assert.rejects(ensureGuest({ dir: join(root, 'never'), buildScript: failing, stdio: 'ignore' }), /building the test guest failed \(exit code 3\)/);
  });
});
