// awan image: the boot images VMs are created from.
import { type Command, Option } from 'commander';
import type { CreateImage, Image } from '../../control/features/images/service.ts';
import { type Page, seg } from './client.ts';
import { mib, orDash, printFields, printJson, printTable } from './output.ts';
import { type ClientOptions, client, jsonOption, run } from './shared.ts';

interface CreateOptions extends ClientOptions {
  format: CreateImage['format'];
  path?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  os?: string;
  readyText?: string;
  import?: boolean;
}

export function registerImages(program: Command): void {
  const image = program.command('image').description('boot images: list, show, register, delete');

  jsonOption(image.command('list').description('list images'))
    .action(run(async (o: ClientOptions) => {
      const page = await client(o).get<Page<Image>>('/api/v1/images');
      if (o.json) return printJson(page);
      printTable(['NAME', 'FORMAT', 'SIZE', 'OS', 'ID'], page.items.map((i) => [i.name, i.format, mib(i.sizeMiB), orDash(i.os), i.id]), 'no images');
    }));

  jsonOption(image.command('show <name>').description('show one image (name or id)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const i = await client(o).get<Image>(`/api/v1/images/${seg(name)}`);
      if (o.json) return printJson(i);
      printFields([
        ['name', i.name], ['id', i.id], ['format', i.format], ['size', mib(i.sizeMiB)], ['os', orDash(i.os)],
        ['path', orDash(i.path)], ['kernel', orDash(i.kernelPath)], ['initrd', orDash(i.initrdPath)], ['cmdline', orDash(i.cmdline)], ['ready text', orDash(i.readyText)], ['created', i.createdAt],
      ]);
    }));

  jsonOption(image.command('create <name>').description('register an image file that every server can read (absolute paths)'))
    .addOption(new Option('--format <format>', 'image format (required)').choices(['qcow2', 'raw', 'kernel']).makeOptionMandatory())
    .option('--path <file>', 'disk image file (qcow2, raw)')
    .option('--kernel <file>', 'kernel file (format kernel)')
    .option('--initrd <file>', 'initramfs file (format kernel)')
    .option('--cmdline <text>', 'kernel command line (format kernel)')
    .option('--ready-text <text>', 'console text that proves the guest booted; starts wait for it (format kernel)')
    .option('--import', 'copy the file into the shared pool instead of using it where it is')
    .option('--os <name>', 'operating system, for people')
    .action(run(async (name: string, o: CreateOptions) => {
      const body: CreateImage = { name, format: o.format };
      if (o.path) body.path = o.path;
      if (o.kernel) body.kernelPath = o.kernel;
      if (o.initrd) body.initrdPath = o.initrd;
      if (o.cmdline) body.cmdline = o.cmdline;
      if (o.os) body.os = o.os;
      if (o.readyText) body.readyText = o.readyText;
      if (o.import) body.import = true;
      const i = await client(o).post<Image>('/api/v1/images', body);
      if (o.json) return printJson(i);
      process.stdout.write(`image ${i.name} registered (${i.id}, ${mib(i.sizeMiB)})\n`);
    }));

  jsonOption(image.command('delete <name>').description('forget an image (refused while VMs use it)'))
    .action(run(async (name: string, o: ClientOptions) => {
      const api = client(o);
      // The API answers 204 with nothing; look the image up first so --json can say which one went.
      const i = await api.get<Image>(`/api/v1/images/${seg(name)}`);
      await api.request('DELETE', `/api/v1/images/${seg(i.id)}`);
      if (o.json) return printJson({ deleted: { id: i.id, name: i.name } });
      process.stdout.write(`image ${i.name} deleted\n`);
    }));
}
