// awan host: the fleet view, join tokens, and maintenance and quarantine (drain, activate).
import type { Command } from 'commander';
import type { Host } from '../../control/features/hosts/model.ts';
import type { Task } from '../../control/features/tasks/service.ts';
import { type Page, queryString, seg } from './client.ts';
import { ago, labels, mib, orDash, printFields, printJson, printTable, yesNo } from './output.ts';
import { type ClientOptions, client, followTask, jsonOption, run, waitOption } from './shared.ts';

/** The state, and since when for a state that needs an eye on it. */
function stateText(h: Host): string {
  const since = h.state === 'quarantined' ? h.quarantinedAt : h.state === 'failed' ? h.failedAt : null;
  return since ? `${h.state} (${ago(since)})` : h.state;
}

export function hostRow(h: Host): string[] {
  return [h.name, stateText(h), String(h.cpus), mib(h.memoryMiB), mib(h.memoryAllocatedMiB), mib(h.memoryFreeMiB), String(h.vmCount), String(h.recentFailures.length), ago(h.lastHeartbeatAt)];
}

export function registerHosts(program: Command): void {
  const host = program.command('host').description('servers: list, inspect, join, drain and activate');

  jsonOption(host.command('list').description('list the servers'))
    .option('--state <state>', 'only hosts in this state (ready, maintenance, unreachable, failed, quarantined, fenced, joining)')
    .action(run(async (o: ClientOptions & { state?: string }) => {
      const page = await client(o).get<Page<Host>>(`/api/v1/hosts${queryString({ state: o.state })}`);
      if (o.json) return printJson(page);
      printTable(['NAME', 'STATE', 'CPUS', 'MEMORY', 'ALLOCATED', 'FREE', 'VMS', 'FAILURES', 'HEARTBEAT'], page.items.map(hostRow), 'no hosts; add one with awan host join-token and awan agent');
    }));

  jsonOption(host.command('show <name>').description('show one server (name or id)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const h = await client(o).get<Host>(`/api/v1/hosts/${seg(name)}`);
      if (o.json) return printJson(h);
      printFields([
        ['name', h.name], ['id', h.id], ['state', stateText(h)], ['reason', orDash(h.stateReason)], ['connected', yesNo(h.connected)],
        ['recent failures', h.recentFailures.join(', ') || '-'],
        ['power fence', h.powerFence ? `${h.powerFence.command.join(' ')} (timeout ${h.powerFence.timeoutS} s)` : '-'],
        ['address', h.address], ['driver', `${h.driver}${h.accelerator ? ` (${h.accelerator})` : ''}`],
        ['cpus', String(h.cpus)], ['memory', mib(h.memoryMiB)], ['allocated', mib(h.memoryAllocatedMiB)], ['free', mib(h.memoryFreeMiB)],
        ['vms', String(h.vmCount)], ['zone', orDash(h.zone)], ['labels', labels(h.labels)],
        ['capabilities', h.capabilities.join(', ') || '-'], ['heartbeat', ago(h.lastHeartbeatAt)], ['created', h.createdAt],
      ]);
    }));

  jsonOption(host.command('join-token').description('make a single-use token for `awan agent --join-token` (admin)'))
    .action(run(async (o: ClientOptions) => {
      const api = client(o);
      const t = await api.post<{ token: string; expiresAt: string }>('/api/v1/hosts/join-tokens');
      if (o.json) return printJson(t);
      process.stdout.write(`${t.token}\n`);
      // The hint goes to stderr so `TOKEN=$(awan host join-token)` captures the token alone.
      process.stderr.write(`single use, expires ${t.expiresAt}; on the new server run:\n  awan agent --control ${api.server} --join-token ${t.token}\n`);
    }));

  waitOption(jsonOption(host.command('drain <name>').description('move every VM off a server and keep new ones away (admin)')))
    .action(run(async (name: string, o: ClientOptions) => {
      const api = client(o);
      const r = await api.post<{ host: Host; task: Task }>(`/api/v1/hosts/${seg(name)}/drain`);
      await followTask(api, r, `drain host ${r.host.name}`, o);
    }));

  jsonOption(host.command('activate <name>').description('take a server out of maintenance or quarantine so it receives VMs again (admin)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const h = await client(o).post<Host>(`/api/v1/hosts/${seg(name)}/activate`);
      if (o.json) return printJson(h);
      process.stdout.write(`host ${h.name} is ${h.state}\n`);
    }));
}
