// The API client commands (login, host, vm, memory, task, image, pool, volume, user).
import type { Command } from 'commander';
import { registerHosts } from './hosts.ts';
import { registerImages } from './images.ts';
import { registerLogin } from './login.ts';
import { registerMemory } from './memory.ts';
import { registerStorage } from './storage.ts';
import { registerTasks } from './tasks.ts';
import { registerUsers } from './users.ts';
import { registerVms } from './vms.ts';
import { addServerOption } from './shared.ts';

export function registerClientCommands(program: Command): void {
  addServerOption(program);
  registerLogin(program);
  registerHosts(program);
  registerVms(program);
  registerMemory(program);
  registerTasks(program);
  registerImages(program);
  registerStorage(program);
  registerUsers(program);
}
