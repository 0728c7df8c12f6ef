// awan demo with QEMU hosts has the test guest before any host exists: each host probes KVM with its kernel.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createControl } from '../control/app.ts';
import { createLogger } from '../lib/logger.ts';
import { runDemo } from './demo.ts';
import { type Control, makeDriver, type StartControl } from './runtime.ts';

const root = mkdtempSync(join(tmpdir(), 'awan-demo-'));
const saved = { password: process.env.AWAN_ADMIN_PASSWORD, guestDir: process.env.AWAN_GUEST_DIR };
after(() => {
  for (const [key, value] of [['AWAN_ADMIN_PASSWORD', saved.password], ['AWAN_GUEST_DIR', saved.guestDir]] as const) {
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
  rmSync(root, { recursive: true, force: true });
});

const startControl: StartControl = async (opts) => {
  const control = await createControl({ db: opts.db, adminPassword: process.env.AWAN_ADMIN_PASSWORD, poolDir: opts.poolDir, imageDirs: opts.imageDirs, defaultImage: opts.defaultImage, log: createLogger('test', 'silent') });
  const { generatedAdminPassword } = await control.start();
  await control.app.listen({ port: 0, host: '127.0.0.1' });
  const address = control.app.server.address();
  return { control, generatedAdminPassword, url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}` };
};

describe('awan demo --driver qemu', () => {
  it('ensures the test guest before it starts any host, and each host probes with that guest', async () => {
    const kernel = join(root, 'vmlinuz');
    const initrd = join(root, 'initrd.img');
    writeFileSync(kernel, 'kernel');
    writeFileSync(initrd, 'initrd');
    // Another guest where the demo would look by itself: only the one it ensured may be used.
    const elsewhere = join(root, 'elsewhere');
    mkdirSync(elsewhere);
    writeFileSync(join(elsewhere, 'guest.json'), JSON.stringify({ kernelPath: join(elsewhere, 'vmlinuz'), initrdPath: join(elsewhere, 'initrd.img'), cmdline: 'console=ttyS0' }));
    process.env.AWAN_GUEST_DIR = elsewhere;
    let control: Control | undefined;
    const seen: string[] = [];
    const probes: unknown[] = [];
    let stop: (() => Promise<void>) | undefined;
    try {
      await runDemo({
        hosts: 2,
        driver: 'qemu',
        port: 0,
        dataDir: join(root, 'data'),
        imageDirs: [],
        json: false,
        makeLogger: async (name) => createLogger(name, 'silent'),
        startControl: async (opts) => {
          const started = await startControl(opts);
          control = started.control;
          return started;
        },
        ensureGuest: async () => {
          seen.push('guest asked for');
          await new Promise((r) => setImmediate(r));
          seen.push('guest ready');
          return { kernel, initrd, cmdline: 'console=ttyS0' };
        },
        // Simulated servers stand in for QEMU ones: what matters is what each is made with, and when.
        makeDriver: async (_kind, o) => {
          seen.push(`host ${o.name}`);
          probes.push(o.probeGuest);
          return makeDriver('sim', o);
        },
        onSignal: (s) => (stop = s),
      });
      assert.deepEqual(seen, ['guest asked for', 'guest ready', 'host qemu-host-1', 'host qemu-host-2']);
      const probe = { kernelPath: kernel, initrdPath: initrd, bootedMarker: 'AWAN-BOOTED' };
      assert.deepEqual(probes, [probe, probe]);
      const image = (await control!.images.list()).find((i) => i.name === 'test-guest');
      assert.deepEqual([image?.kernelPath, image?.initrdPath], [kernel, initrd]);
    } finally {
      await stop?.();
    }
  });
});
