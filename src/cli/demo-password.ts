// The demo's admin password: the banner prints one only after checking that it logs in.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AuthService } from '../control/features/auth/service.ts';

export interface DemoPassword {
  /** The first admin's password if control has no user yet. */
  initial: string;
  /** After control started: the password to print, or undefined with the reason the banner gives instead. */
  settle(auth: AuthService): Promise<{ password: string } | { password: undefined; note: string }>;
}

/**
 * AWAN_ADMIN_PASSWORD is the demo's admin password on every start, not only the first: a user who starts
 * the demo with it expects to log in with it (and that is how a forgotten demo password is reset). Without
 * it, the demo prints the password it keeps in its data directory (generated on first start), as long as
 * that still is the admin's password; after `awan user passwd` it no longer is, and the banner says so.
 */
export function demoPassword(dataDir: string, env: NodeJS.ProcessEnv = process.env): DemoPassword {
  const file = join(dataDir, 'admin-password');
  const fromEnv = env.AWAN_ADMIN_PASSWORD || undefined;
  const kept = existsSync(file) ? readFileSync(file, 'utf8').trim() || undefined : undefined;
  const initial = fromEnv ?? kept ?? randomBytes(9).toString('base64url');
  // Kept so a later start without AWAN_ADMIN_PASSWORD can print it; the data directory is the demo's own.
  const keep = (password: string) => {
    if (password !== kept) writeFileSync(file, `${password}\n`, { mode: 0o600 });
  };
  return {
    initial,
    async settle(auth) {
      if (await auth.checkPassword('admin', initial)) {
        keep(initial);
        return { password: initial };
      }
      if (fromEnv) {
        await auth.setPassword('admin', fromEnv, undefined);
        keep(fromEnv);
        return { password: fromEnv };
      }
      return { password: undefined, note: 'changed since the demo set it; AWAN_ADMIN_PASSWORD=NEW npm run demo sets a new one' };
    },
  };
}
