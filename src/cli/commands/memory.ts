// awan memory: VMs borrow memory (for a while or for good), give it back, and the leases that record it.
import { type Command, Option } from 'commander';
import type { Borrow, Lease } from '../../control/features/memory/model.ts';
import type { Task } from '../../control/features/tasks/service.ts';
import { type ApiClient, seg } from './client.ts';
import { mib, orDash, printFields, printJson, printTable } from './output.ts';
import { type ClientOptions, client, followTask, jsonOption, positiveInt, run, waitOption } from './shared.ts';

type Accepted = { lease: Lease; task: Task };

interface BorrowOptions extends ClientOptions {
  size: number;
  permanent?: boolean;
  ttl?: number;
  mechanism?: Borrow['mechanism'];
  donor?: string;
}

const BORROW_HELP = `
Examples:
  awan memory borrow web-1 --size 1024 --ttl 3600 --wait
  awan memory borrow db-1 --size 2048 --mechanism remote --donor host-3
  awan memory borrow db-1 --size 4096 --permanent`;

const how = (l: Lease) => (l.mechanism ?? `${l.requestedMechanism}?`) + (l.donorHostId ? ` from ${l.donorHostId}` : '');

function registerRequests(memory: Command): void {
  waitOption(jsonOption(memory.command('borrow <vm>').description('give a running VM more memory (a lease)')))
    .requiredOption('--size <MiB>', 'how much, in MiB', positiveInt)
    .option('--permanent', 'keep it for good: it becomes part of the VM (default: temporary)')
    .option('--ttl <seconds>', 'a temporary lease is given back by itself after this long', positiveInt)
    .addOption(new Option('--mechanism <how>', 'how (default auto: the cheapest that applies)').choices(['auto', 'grow', 'reclaim', 'remote', 'migrate']))
    .option('--donor <host>', 'the host that lends (remote; name or id)')
    .addHelpText('after', BORROW_HELP)
    .action(run(async (vm: string, o: BorrowOptions) => {
      const body: Borrow = { vmId: vm, sizeMiB: o.size, kind: o.permanent ? 'permanent' : 'temporary' };
      if (o.ttl !== undefined) body.ttlS = o.ttl;
      if (o.mechanism) body.mechanism = o.mechanism;
      if (o.donor) body.donorHostId = o.donor;
      const api = client(o);
      await followTask(api, await api.post<Accepted>('/api/v1/memory/leases', body), `borrow ${o.size} MiB for vm ${vm}`, o);
    }));

  const action = (verb: string, description: string, path: string) =>
    waitOption(jsonOption(memory.command(`${verb} <lease>`).description(description))).action(run(async (id: string, o: ClientOptions) => {
      const api: ApiClient = client(o);
      await followTask(api, await api.post<Accepted>(`/api/v1/memory/leases/${seg(id)}/${path}`), `${verb} lease ${id}`, o);
    }));
  action('return', 'give a lease back: the VM, its neighbours and the donor are as they were', 'return');
  action('make-permanent', 'keep a temporary lease for good: the VM boots with the memory from now on', 'make-permanent');
}

function registerReads(memory: Command): void {
  jsonOption(memory.command('list').description('list memory leases'))
    .option('--vm <vm>', 'only the leases of this VM (name or id)')
    .option('--state <state>', 'only leases in this state (requested, granting, active, returning, returned, failed)')
    .action(run(async (o: ClientOptions & { vm?: string; state?: string }) => {
      const items = await client(o).all<Lease>('/api/v1/memory/leases', { vm: o.vm, state: o.state });
      if (o.json) return printJson({ items, nextCursor: null });
      printTable(
        ['ID', 'VM', 'SIZE', 'KIND', 'HOW', 'STATE', 'EXPIRES', 'MESSAGE'],
        items.map((l) => [l.id, l.vmId, mib(l.sizeMiB), l.kind, how(l), l.state, orDash(l.expiresAt), orDash(l.message)]),
        'no memory leases',
      );
    }));

  jsonOption(memory.command('show <lease>').description('show one memory lease'))
    .action(run(async (id: string, o: ClientOptions) => {
      const l = await client(o).get<Lease>(`/api/v1/memory/leases/${seg(id)}`);
      if (o.json) return printJson(l);
      printFields([
        ['id', l.id], ['vm', l.vmId], ['size', mib(l.sizeMiB)], ['kind', l.kind], ['state', l.state],
        ['mechanism', `${orDash(l.mechanism)} (asked: ${l.requestedMechanism})`], ['borrower host', orDash(l.borrowerHostId)], ['donor host', orDash(l.donorHostId)],
        ['expires', orDash(l.expiresAt)], ['origin', l.origin], ['task', orDash(l.taskId)], ['message', orDash(l.message)],
        ['granted', orDash(l.grantedAt)], ['ended', orDash(l.endedAt)], ['created', l.createdAt],
      ]);
    }));
}

export function registerMemory(program: Command): void {
  const memory = program.command('memory').description('memory leases: VMs borrow memory for a while or for good');
  registerRequests(memory);
  registerReads(memory);
}
