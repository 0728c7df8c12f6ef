// The API client commands (login, host, vm, task, image).
import type { Command } from 'commander';

export function registerClientCommands(_program: Command): void {}
