// Control shuts down while clients hold event streams open: the streams end and nothing is left waiting.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { startCluster } from '../support/cluster.ts';

describe('shutdown', () => {
  it('closes with an event stream open, and ends that stream', { timeout: 20_000 }, async () => {
    const c = await startCluster({ hosts: 1 });
    const res = await fetch(`${c.url}/api/v1/events`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${c.token}` } });
    const reader = res.body!.getReader();
    await reader.read(); // the stream is open and has sent its greeting
    await c.close();
    for (;;) {
      const chunk = await reader.read().catch(() => ({ done: true }));
      if (chunk.done) break;
    }
    // Reaching here means close() returned and the stream ended (a hang fails the test by its timeout).
    await assert.rejects(fetch(`${c.url}/healthz`), 'the server no longer answers');
  });
});
