// awan login: trades a user name and password for a session token, kept per server in the credentials file.
import type { Command } from 'commander';
import { ApiClient } from './client.ts';
import { resolveServer, saveCredential } from './config.ts';
import { readSecret } from './prompt.ts';
import { run } from './shared.ts';

interface LoginAnswer {
  token: string;
  expiresAt: string;
  user: { id: string; username: string; role: string };
}

async function password(flag: string | undefined): Promise<string> {
  const given = flag ?? process.env.AWAN_PASSWORD;
  if (given) return given;
  // Without a terminal the password is the first line of standard input (`echo "$PW" | awan login`).
  return readSecret('password: ', 'no password given: pass --password, set AWAN_PASSWORD, pipe it on standard input, or run awan login on a terminal');
}

export function registerLogin(program: Command): void {
  program.command('login').description('log in to Cloud Control and keep the token for later commands')
    .option('--username <name>', 'user name (default: $AWAN_USERNAME or admin)')
    .option('--password <password>', 'password (default: $AWAN_PASSWORD, a line of standard input, or asked on a terminal)')
    .action(run(async (o: { server?: string; username?: string; password?: string }) => {
      const server = resolveServer(o.server);
      const username = o.username ?? process.env.AWAN_USERNAME ?? 'admin';
      const secret = await password(o.password);
      const api = new ApiClient(server, undefined);
      const answer = await api.request<LoginAnswer>('POST', '/api/v1/auth/login', { username, password: secret }, { auth: false });
      const path = saveCredential(server, { token: answer.token, username: answer.user.username, expiresAt: answer.expiresAt });
      process.stdout.write(`logged in to ${server} as ${answer.user.username} (${answer.user.role}); token kept in ${path}\n`);
    }));
}
