// awan pool / awan volume: where disks live and the volumes in them (volumes are made through VMs).
import type { Command } from 'commander';
import type { Pool } from '../../control/features/pools/model.ts';
import type { Volume } from '../../control/features/volumes/model.ts';
import { type Page, queryString, seg } from './client.ts';
import { ago, mib, orDash, printFields, printJson, printTable } from './output.ts';
import { type ClientOptions, client, jsonOption, positiveInt, run } from './shared.ts';

const free = (p: Pool) => (p.freeMiB === null ? '-' : `${mib(p.freeMiB)} of ${mib(p.capacityMiB)}`);

export function registerStorage(program: Command): void {
  const pool = program.command('pool').description('storage pools: each host\'s local pool and the shared ones');

  jsonOption(pool.command('list').description('list pools'))
    .option('--type <type>', 'only local or shared pools')
    .option('--host <host>', 'only the pools of this host (id)')
    .option('--limit <n>', 'at most this many', positiveInt)
    .action(run(async (o: ClientOptions & { type?: string; host?: string; limit?: number }) => {
      const page = await client(o).get<Page<Pool>>(`/api/v1/pools${queryString({ type: o.type, host: o.host, limit: o.limit?.toString() })}`);
      if (o.json) return printJson(page);
      printTable(['NAME', 'TYPE', 'FREE', 'HOSTS', 'PATH', 'ID'], page.items.map((p) => [p.name, p.type, free(p), String(p.hosts.length), p.path, p.id]), 'no pools');
    }));

  jsonOption(pool.command('show <name>').description('show one pool (name or id)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const p = await client(o).get<Pool>(`/api/v1/pools/${seg(name)}`);
      if (o.json) return printJson(p);
      printFields([
        ['name', p.name], ['id', p.id], ['type', p.type], ['path', p.path], ['host', orDash(p.hostId)],
        ['capacity', mib(p.capacityMiB)], ['free', mib(p.freeMiB)], ['reported', ago(p.reportedAt)],
        ['reached from', p.hosts.join(', ') || '-'], ['created', p.createdAt],
      ]);
    }));

  const volume = program.command('volume').description('volumes: VM disks in their pools');

  jsonOption(volume.command('list').description('list volumes'))
    .option('--pool <pool>', 'only the volumes of this pool (name or id)')
    .option('--vm <id>', 'only the volumes of this VM (id)')
    .option('--limit <n>', 'at most this many', positiveInt)
    .action(run(async (o: ClientOptions & { pool?: string; vm?: string; limit?: number }) => {
      const page = await client(o).get<Page<Volume>>(`/api/v1/volumes${queryString({ pool: o.pool, vm: o.vm, limit: o.limit?.toString() })}`);
      if (o.json) return printJson(page);
      printTable(['NAME', 'STATE', 'SIZE', 'ACTUAL', 'POOL', 'COPY', 'VM', 'ID'], page.items.map((v) => [v.name, v.state, mib(v.sizeMiB), mib(v.actualSizeMiB), v.poolId, copyOf(v), orDash(v.vmId), v.id]), 'no volumes');
    }));

  jsonOption(volume.command('show <id>').description('show one volume'))
    .action(run(async (id: string, o: ClientOptions) => {
      const v = await client(o).get<Volume>(`/api/v1/volumes/${seg(id)}`);
      if (o.json) return printJson(v);
      printFields([
        ['name', v.name], ['id', v.id], ['state', v.state], ['pool', v.poolId], ['vm', orDash(v.vmId)], ['format', v.format],
        ['size', mib(v.sizeMiB)], ['actual', mib(v.actualSizeMiB)], ['backing', orDash(v.backingPath)], ['deleting', v.deleting ? 'yes' : 'no'],
        ['copy', copyOf(v)], ['copy message', orDash(v.replica?.message ?? null)],
        ['message', orDash(v.message)], ['generation', `${v.observedGeneration}/${v.generation}`], ['updated', v.updatedAt],
      ]);
    }));
}

/** A replicated volume's copy: its state and host; `-` for a volume that is not replicated. */
const copyOf = (v: Volume) => (!v.replicated ? '-' : v.replica ? `${v.replica.state} on ${v.replica.hostId}` : 'none yet');
