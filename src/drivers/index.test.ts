// createDriver: the sim factory behind the kind switch.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDriver } from './index.ts';

describe('createDriver', () => {
  it('builds a sim driver that reports the host it was given', async () => {
    const driver = await createDriver('sim', { hostname: 'sim-x', cpus: 4, memoryMiB: 2048 });
    try {
      const facts = await driver.facts();
      assert.equal(driver.kind, 'sim');
      assert.equal(facts.hostname, 'sim-x');
      assert.equal(facts.cpus, 4);
      assert.equal(facts.memoryFreeMiB, 2048);
    } finally {
      await driver.close();
    }
  });
});
