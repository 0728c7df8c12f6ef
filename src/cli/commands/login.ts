// awan login: trades a user name and password for a session token, kept per server in the credentials file,
// and makes that server the one later commands talk to.
import type { Command } from 'commander';
import { ApiClient } from './client.ts';
import { resolveServer, saveCredential } from './config.ts';
import { printJson } from './output.ts';
import { readSecret } from './prompt.ts';
import { type ClientOptions, CliError, jsonOption, run } from './shared.ts';

interface LoginAnswer {
  token: string;
  expiresAt: string;
  user: { id: string; username: string; role: string };
}

async function password(flag: string | undefined): Promise<string> {
  const given = flag ?? process.env.AWAN_PASSWORD;
  if (given) return given;
  const secret = await readSecret('password: ', 'no password given: type it when asked, pipe it on standard input (echo PW | awan login), pass --password or set AWAN_PASSWORD');
  if (!secret) throw new CliError('BAD_REQUEST', 'the password is empty: type it when asked, pipe it on standard input (echo PW | awan login), pass --password or set AWAN_PASSWORD');
  return secret;
}

export function registerLogin(program: Command): void {
  jsonOption(program.command('login').description('log in to Cloud Control, keep the token, and use that server from now on'))
    .option('--username <name>', 'user name (default: $AWAN_USERNAME or admin)')
    .option('--password <password>', 'password (default: $AWAN_PASSWORD, else asked on a terminal or read from standard input)')
    .action(run(async (o: ClientOptions & { username?: string; password?: string }) => {
      const server = resolveServer(o.server);
      const username = o.username ?? process.env.AWAN_USERNAME ?? 'admin';
      const secret = await password(o.password);
      const api = new ApiClient(server, undefined);
      const answer = await api.request<LoginAnswer>('POST', '/api/v1/auth/login', { username, password: secret }, { auth: false });
      const path = saveCredential(server, { token: answer.token, username: answer.user.username, expiresAt: answer.expiresAt });
      // The token stays in the file: printing it would put a secret in terminal scrollback and CI logs.
      if (o.json) return printJson({ server, user: answer.user, expiresAt: answer.expiresAt, credentialsFile: path });
      process.stdout.write(`logged in to ${server} as ${answer.user.username} (${answer.user.role}); token kept in ${path}\n`);
    }));
}
