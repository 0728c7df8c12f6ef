// awan vm: create, list and inspect virtual machines, and the power and placement actions.
import { type Command, Option } from 'commander';
import type { Host } from '../../control/features/hosts/model.ts';
import type { Task } from '../../control/features/tasks/service.ts';
import type { CreateVm, Vm } from '../../control/features/vms/model.ts';
import { type ApiClient, type Page, seg } from './client.ts';
import { labels, mib, orDash, printFields, printJson, printTable, yesNo } from './output.ts';
import { fieldFlags } from './fields.ts';
import { type ClientOptions, client, collect, followTask, jsonOption, positiveInt, run, waitOption } from './shared.ts';
import { registerConsole } from './console.ts';

type Accepted = { vm: Vm; task: Task };

interface CreateOptions extends ClientOptions {
  cpus: number;
  memory: number;
  maxMemory?: number;
  image?: string;
  disk?: number;
  ha?: boolean;
  label?: string[];
  antiAffinity?: string;
  storage?: 'shared' | 'local' | 'replicated';
  start: boolean;
}

function parseLabels(pairs: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq < 1) throw new Error(`label ${p} is not key=value`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

/** Host ids to names for the tables; one request for the whole list rather than one per VM. */
async function hostNames(api: ApiClient): Promise<Map<string, string>> {
  const page = await api.get<Page<Host>>('/api/v1/hosts');
  return new Map(page.items.map((h) => [h.id, h.name]));
}

const hostOf = (names: Map<string, string>, id: string | null) => (id ? names.get(id) ?? id : '-');

/** What `vm create` needs and what it assumes, under its options in --help. */
const CREATE_HELP = `
Only NAME is required; every option has a default: 1 CPU, 512 MiB, the server's default image
(or none), a disk the size of the image, shared storage, started at once.

Examples:
  awan vm create web-1
  awan vm create db-1 --cpus 4 --memory 8192 --disk 40 --ha --wait`;

function registerCreate(vm: Command): void {
  const create = waitOption(jsonOption(vm.command('create').description('create a VM (and start it unless --no-start)')))
    .argument('<name>', 'name of the new VM (required): letters, digits, ".", "_", "-"')
    .option('--cpus <n>', 'virtual CPUs', positiveInt, 1)
    .option('--memory <MiB>', 'memory in MiB', positiveInt, 512)
    .option('--max-memory <MiB>', 'memory the VM may grow to (MiB; default: --memory)', positiveInt)
    .option('--image <name>', 'boot image (name or id; default: the server\'s default image)')
    .option('--disk <GiB>', 'disk size in GiB (default: the image\'s size, at least 1)', positiveInt)
    .option('--ha', 'restart the VM on another server when its server fails')
    .option('--label <key=value>', 'run only on servers with this label; repeat for more', collect)
    .option('--anti-affinity <group>', 'keep VMs of this group on different servers')
    .addOption(new Option('--storage <where>', 'disk on the shared pool; on the server (copied along on migration); or on the server with a synchronous copy on a second one').choices(['shared', 'local', 'replicated']))
    .option('--no-start', 'create it stopped')
    .addHelpText('after', CREATE_HELP);
  fieldFlags(create, { placementLabels: '--label' })
    .action(run(async (name: string, o: CreateOptions) => {
      const body: CreateVm = { name, cpus: o.cpus, memoryMiB: o.memory, start: o.start };
      if (o.maxMemory !== undefined) body.maxMemoryMiB = o.maxMemory;
      if (o.image) body.image = o.image;
      if (o.disk !== undefined) body.diskGiB = o.disk;
      if (o.ha) body.ha = true;
      if (o.label?.length) body.placementLabels = parseLabels(o.label);
      if (o.antiAffinity) body.antiAffinity = o.antiAffinity;
      if (o.storage) body.storage = o.storage;
      const api = client(o);
      const r = await api.post<Accepted>('/api/v1/vms', body);
      await followTask(api, r, `create vm ${r.vm.name}`, o);
    }));
}

function registerReads(vm: Command): void {
  jsonOption(vm.command('list').description('list VMs'))
    .option('--host <host>', 'only VMs on this server (name or id)')
    .option('--phase <phase>', 'only VMs in this phase (running, stopped, failed, …)')
    .option('--name <text>', 'only VMs whose name contains this')
    .action(run(async (o: ClientOptions & { host?: string; phase?: string; name?: string }) => {
      const api = client(o);
      // The API filters by host id; people type names, so resolve first (HOST_NOT_FOUND if neither).
      const hostId = o.host ? (await api.get<Host>(`/api/v1/hosts/${seg(o.host)}`)).id : undefined;
      const items = await api.all<Vm>('/api/v1/vms', { host: hostId, phase: o.phase, name: o.name });
      if (o.json) return printJson({ items, nextCursor: null });
      const names = await hostNames(api);
      printTable(
        ['NAME', 'PHASE', 'HOST', 'CPUS', 'MEMORY', 'HA', 'MESSAGE'],
        items.map((v) => [v.name, v.phase, hostOf(names, v.hostId), String(v.cpus), mib(v.memoryMiB), yesNo(v.ha), orDash(v.message)]),
        'no VMs',
      );
    }));

  jsonOption(vm.command('show <name>').description('show one VM (name or id)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const api = client(o);
      const v = await api.get<Vm>(`/api/v1/vms/${seg(name)}`);
      if (o.json) return printJson(v);
      const names = await hostNames(api);
      printFields([
        ['name', v.name], ['id', v.id], ['phase', v.phase], ['power', v.powerState], ['host', hostOf(names, v.hostId)],
        ...(v.targetHostId ? [['migrating to', hostOf(names, v.targetHostId)] as [string, string]] : []),
        ['cpus', String(v.cpus)], ['memory', mib(v.memoryMiB)], ['max memory', mib(v.maxMemoryMiB)], ['memory now', mib(v.memoryActualMiB)],
        ['disk', `${v.diskGiB} GiB (${v.storage})`], ['image', orDash(v.imageId)], ['ha', yesNo(v.ha)], ['labels', labels(v.placementLabels)],
        ['anti-affinity', orDash(v.antiAffinity)], ['nics', v.nics.map((n) => `${n.mode}${n.bridge ? `:${n.bridge}` : ''} ${n.mac}`).join(', ') || '-'],
        ['generation', `${v.generation} (observed ${v.observedGeneration})`], ['message', orDash(v.message)], ['created', v.createdAt],
      ]);
    }));
}

/** start, stop, reboot, migrate and delete share their shape: one call, a 202 with a task, maybe a wait. */
function registerActions(vm: Command): void {
  const action = (verb: string, description: string, call: (api: ApiClient, name: string, o: ClientOptions & { force?: boolean; to?: string; target?: number }) => Promise<Accepted>) =>
    waitOption(jsonOption(vm.command(`${verb} <name>`).description(description))).action(run(async (name: string, o: ClientOptions & { force?: boolean; to?: string; target?: number }) => {
      const api = client(o);
      const r = await call(api, name, o);
      await followTask(api, r, `${verb} vm ${r.vm.name}`, o);
    }));

  action('start', 'start a stopped VM', (api, name) => api.post(`/api/v1/vms/${seg(name)}/start`));
  action('stop', 'stop a VM: the guest shuts down, or with --force stops at once', (api, name, o) => api.post(`/api/v1/vms/${seg(name)}/stop`, o.force ? { force: true } : undefined))
    .addOption(new Option('--force', 'stop at once instead of waiting for the guest'));
  action('reboot', 'reboot a running VM', (api, name) => api.post(`/api/v1/vms/${seg(name)}/reboot`));
  fieldFlags(action('migrate', 'live-migrate a running VM to another server', (api, name, o) => api.post(`/api/v1/vms/${seg(name)}/migrate`, o.to ? { host: o.to } : undefined)), { host: '--to' })
    .option('--to <host>', 'target server (name or id); the scheduler picks one when absent');
  action('delete', 'stop a VM and delete it with its disk', (api, name) => api.request('DELETE', `/api/v1/vms/${seg(name)}`));
  jsonOption(vm.command('resize <name>').description('grow the disk of a stopped VM'))
    .requiredOption('--disk <GiB>', 'new disk size in GiB (only growing)', positiveInt)
    .action(run(async (name: string, o: ClientOptions & { disk: number }) => {
      const v = await client(o).post<Vm>(`/api/v1/vms/${seg(name)}/resize`, { diskGiB: o.disk });
      if (o.json) return printJson(v);
      process.stdout.write(`vm ${v.name} disk is ${v.diskGiB} GiB\n`);
    }));
  action('memory', 'give a running VM this much memory now (balloon, or hot-plug up to its maximum)', (api, name, o) =>
    api.post(`/api/v1/vms/${seg(name)}/memory`, { targetMiB: o.target }))
    .requiredOption('--target <MiB>', 'memory the guest should have, in MiB', positiveInt);
}

export function registerVms(program: Command): void {
  const vm = program.command('vm').description('virtual machines: create, list, start, stop, migrate, delete');
  registerCreate(vm);
  registerReads(vm);
  registerActions(vm);
  registerConsole(vm);
}
