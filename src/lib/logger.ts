// One pino logger factory: structured JSON for machines, and readable lines (pino-pretty) on a terminal.
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/** `auto`: pretty when the destination is a terminal, JSON lines otherwise (pipes, files, log shippers). */
export type LogFormat = 'auto' | 'json' | 'pretty';

export interface LogOptions {
  format?: LogFormat;
  /** Where the lines go; standard output by default. */
  destination?: NodeJS.WritableStream & { isTTY?: boolean };
}

export function logFormat(env: NodeJS.ProcessEnv = process.env): LogFormat {
  const f = env.AWAN_LOG_FORMAT;
  return f === 'json' || f === 'pretty' ? f : 'auto';
}

export function createLogger(name: string, level = process.env.AWAN_LOG_LEVEL ?? 'info', opts: LogOptions = {}): Logger {
  const destination = opts.destination ?? process.stdout;
  const format = opts.format ?? logFormat();
  const isPretty = format === 'pretty' || (format === 'auto' && Boolean(destination.isTTY));
  if (!isPretty) return opts.destination ? pino({ name, level }, destination) : pino({ name, level });
  // Synchronous, so the last lines before an exit are not lost; colours only where they can be seen.
  return pino({ name, level }, pretty({ destination, sync: true, colorize: Boolean(destination.isTTY), translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname' }));
}
