// Follows a task to its end: a redrawn progress bar on a terminal, one line per change otherwise.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Task } from '../../control/features/tasks/service.ts';
import { type ApiClient, seg } from './client.ts';
import { withNames } from './names.ts';

const POLL_MS = 200;
const BAR_WIDTH = 30;
const finished = new Set<Task['state']>(['succeeded', 'failed', 'cancelled']);

export function bar(progress: number, width = BAR_WIDTH): string {
  const p = Math.min(100, Math.max(0, Math.round(progress)));
  const full = Math.round((p / 100) * width);
  return `[${'#'.repeat(full)}${'-'.repeat(width - full)}] ${String(p).padStart(3)}%`;
}

const describe = async (api: ApiClient, t: Task) => `${t.state}${t.message ? `: ${await withNames(api, t.message)}` : ''}`;

export interface WatchOptions {
  tty?: boolean;
  out?: NodeJS.WriteStream;
  signal?: AbortSignal;
}

/**
 * Polls the task until it finishes and prints how it went. Returns the final task; the caller decides the
 * exit code. Polling rather than the SSE stream keeps it working through proxies that buffer streams.
 */
export async function watchTask(client: ApiClient, id: string, opts: WatchOptions = {}): Promise<Task> {
  const out = opts.out ?? process.stdout;
  const tty = opts.tty ?? Boolean(out.isTTY);
  let last = '';
  for (;;) {
    const t = await client.get<Task>(`/api/v1/tasks/${seg(id)}`);
    const done = finished.has(t.state);
    if (tty) {
      // Clip to the terminal so the line never wraps; a wrapped line cannot be redrawn with \r.
      const line = `${bar(t.progress)} ${await describe(client, t)}`.slice(0, Math.max(20, (out.columns || 80) - 1));
      out.write(`\r\x1b[2K${line}${done ? '\n' : ''}`);
    } else {
      const line = `${t.kind} ${t.id}: ${String(t.progress).padStart(3)}% ${await describe(client, t)}`;
      if (line !== last) out.write(`${line}\n`);
      last = line;
    }
    if (done) return t;
    await sleep(POLL_MS, undefined, { signal: opts.signal });
  }
}

/** For --json: follow without a word, so stdout holds only the final document. */
export const quietly: WatchOptions = { out: { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream, tty: false };
