// The awan command tree, built without parsing so tests can walk every command it has.
import { Command } from 'commander';
import { registerRuntimeCommands } from './runtime.ts';
import { registerClientCommands } from './commands/index.ts';
import { jsonErrorOutput } from './commands/shared.ts';

export function buildProgram(argv: readonly string[] = process.argv): Command {
  const program = new Command('awan')
    .description('awan: open datacenter manager — virtual machines, failover and shared memory across servers')
    .version('0.1.0');
  // A script that asked for --json gets commander's own complaints (missing argument, bad value) in the
  // same error body as the API's, and no help text around them.
  if (argv.includes('--json')) program.configureOutput(jsonErrorOutput);
  else program.showHelpAfterError();
  registerRuntimeCommands(program);
  registerClientCommands(program);
  return program;
}
