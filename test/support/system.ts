// System dependencies of the suite: a missing one fails the test with the command that installs it.
import { execFileSync } from 'node:child_process';

export function requireCommand(command: string, install: string): void {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${command} is missing: ${install}`);
  }
}
