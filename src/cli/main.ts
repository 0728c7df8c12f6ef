// awan <command>: the one entry point of the server, the agent, the demo and the API client.
import { Command } from 'commander';
import { registerRuntimeCommands } from './runtime.ts';
import { registerClientCommands } from './commands/index.ts';

const program = new Command('awan')
  .description('awan: open datacenter manager — virtual machines, failover and shared memory across servers')
  .version('0.1.0')
  .showHelpAfterError();

registerRuntimeCommands(program);
registerClientCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  console.error(`awan: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
