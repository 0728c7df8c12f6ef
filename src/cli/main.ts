// awan <command>: the one entry point of the server, the agent, the demo and the API client.
import { buildProgram } from './program.ts';
import { reportError } from './commands/shared.ts';

buildProgram().parseAsync(process.argv).catch((err: unknown) => {
  reportError(err);
  process.exit(1);
});
