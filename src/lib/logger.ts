// One pino logger factory so every process logs structured JSON the same way.
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.AWAN_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level });
}
