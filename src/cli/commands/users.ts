// awan user: accounts; `passwd` changes your own password or, as admin, sets another user's.
import type { Command } from 'commander';
import { seg } from './client.ts';
import { printJson } from './output.ts';
import { readSecret } from './prompt.ts';
import { type ClientOptions, client, jsonOption, run } from './shared.ts';

interface Changed {
  user: { id: string; username: string };
  revokedTokens: number;
}

/** Asked twice on a terminal, where a typo cannot be seen; a script pipes it once. */
async function newPassword(whose: string): Promise<string> {
  const missing = `no new password given: pipe it on standard input or run awan user passwd on a terminal`;
  const first = await readSecret(`new password for ${whose}: `, missing);
  if (process.stdin.isTTY && (await readSecret('repeat it: ', missing)) !== first) throw new Error('the two passwords differ; nothing changed');
  return first;
}

export function registerUsers(program: Command): void {
  const user = program.command('user').description('user accounts and their passwords');

  jsonOption(user.command('passwd [username]').description(
    'change your password (asks for the current one), or as admin set USERNAME\'s; other sessions and API tokens of that user stop working. '
    + 'Without a terminal the passwords are read from standard input, one a line: current then new, or only the new one for another user',
  ))
    .action(run(async (username: string | undefined, o: ClientOptions) => {
      const api = client(o);
      const me = await api.get<{ username: string }>('/api/v1/auth/me');
      const self = username === undefined || username === me.username;
      let changed: Changed;
      if (self) {
        const currentPassword = await readSecret('current password: ', 'no current password given: pipe it on standard input or run awan user passwd on a terminal');
        changed = await api.post<Changed>('/api/v1/auth/password', { currentPassword, newPassword: await newPassword(me.username) });
      } else {
        changed = await api.request<Changed>('PUT', `/api/v1/users/${seg(username)}/password`, { password: await newPassword(username) });
      }
      if (o.json) return printJson(changed);
      const n = changed.revokedTokens;
      const revoked = n === 0 ? 'no other token to revoke' : `${n} other token${n === 1 ? '' : 's'} (sessions, API tokens) revoked`;
      process.stdout.write(`password of ${changed.user.username} changed; ${revoked}${self ? '; you stay logged in here' : ''}\n`);
    }));
}
