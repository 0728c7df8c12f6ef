// Images: bootable templates (a qcow2/raw disk, or a kernel and initrd) that VMs are created from.
import type { Kysely } from 'kysely';
import { type Static, Type } from 'typebox';
import { newId } from '../../../lib/ids.ts';
import { AppError, notFound } from '../../errors.ts';
import type { Database, ImageRow } from '../../store/schema.ts';
import type { EventService } from '../events/service.ts';

export const ImageSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  format: Type.Enum(['qcow2', 'raw', 'kernel'] as const),
  path: Type.Union([Type.String(), Type.Null()]),
  kernelPath: Type.Union([Type.String(), Type.Null()]),
  initrdPath: Type.Union([Type.String(), Type.Null()]),
  cmdline: Type.Union([Type.String(), Type.Null()]),
  readyText: Type.Union([Type.String(), Type.Null()]),
  sizeMiB: Type.Integer(),
  os: Type.Union([Type.String(), Type.Null()]),
  imported: Type.Boolean({ description: 'the file is a copy an earlier control made in the shared pool; a host deletes it with the image' }),
  createdAt: Type.String(),
});
export type Image = Static<typeof ImageSchema>;

const Path = Type.String({ minLength: 1, maxLength: 4096, pattern: '^/' });
export const CreateImageBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-zA-Z0-9][a-zA-Z0-9._-]*$' }),
    format: Type.Enum(['qcow2', 'raw', 'kernel'] as const),
    path: Type.Optional(Path),
    kernelPath: Type.Optional(Path),
    initrdPath: Type.Optional(Path),
    cmdline: Type.Optional(Type.String({ maxLength: 1024 })),
    readyText: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'console text that proves a kernel image booted; starts wait for it' })),
    sizeMiB: Type.Optional(Type.Integer({ minimum: 0, description: 'ignored: the size is read from the image files' })),
    os: Type.Optional(Type.String({ maxLength: 63 })),
    import: Type.Optional(Type.Boolean({ description: 'refused: control copies no files into pools; register the file in place' })),
  },
  { additionalProperties: false },
);
export type CreateImage = Static<typeof CreateImageBody>;

export const imageFromRow = (r: ImageRow): Image => ({
  id: r.id,
  name: r.name,
  format: r.format,
  path: r.path,
  kernelPath: r.kernel_path,
  initrdPath: r.initrd_path,
  cmdline: r.cmdline,
  readyText: r.ready_text,
  sizeMiB: r.size_mib,
  os: r.os,
  imported: r.imported !== 0,
  createdAt: r.created_at,
});

/**
 * Checks an image's files and returns its size and the canonical paths to record (the ones that were
 * checked); an import returns its copy in the pool and `imported`.
 */
export type ImageInspector = (img: CreateImage) => Promise<{ sizeMiB: number; path?: string; kernelPath?: string; initrdPath?: string; imported?: boolean }>;

export function createImageService({ db, events, inspect, discard }: {
  db: Kysely<Database>;
  events: EventService;
  inspect: ImageInspector;
  /** Has an imported copy deleted (by a host) once its image is gone. */
  discard: (path: string) => Promise<void>;
}) {
  async function find(idOrName: string): Promise<ImageRow> {
    const row = await db.selectFrom('images').selectAll().where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)])).executeTakeFirst();
    if (!row) throw notFound('IMAGE_NOT_FOUND', 'image', idOrName);
    return row;
  }
  return {
    find,
    async get(idOrName: string) {
      return imageFromRow(await find(idOrName));
    },
    async list() {
      return (await db.selectFrom('images').selectAll().orderBy('name').execute()).map(imageFromRow);
    },
    async create(body: CreateImage): Promise<Image> {
      if (body.format === 'kernel' ? !body.kernelPath || !body.initrdPath || body.path : !body.path || body.kernelPath || body.initrdPath || body.readyText) {
        throw new AppError('VALIDATION_FAILED', body.format === 'kernel' ? 'a kernel image needs kernelPath and initrdPath and no path' : `a ${body.format} image needs path only`);
      }
      const taken = await db.selectFrom('images').select('id').where('name', '=', body.name).executeTakeFirst();
      if (taken) throw new AppError('NAME_TAKEN', `an image named ${body.name} already exists`, { name: body.name });
      const checked = await inspect(body);
      const row: ImageRow = {
        id: newId(),
        name: body.name,
        format: body.format,
        path: checked.path ?? body.path ?? null,
        kernel_path: checked.kernelPath ?? body.kernelPath ?? null,
        initrd_path: checked.initrdPath ?? body.initrdPath ?? null,
        cmdline: body.cmdline ?? null,
        ready_text: body.readyText ?? null,
        size_mib: checked.sizeMiB,
        os: body.os ?? null,
        imported: checked.imported ? 1 : 0,
        created_at: new Date().toISOString(),
      };
      try {
        await db.insertInto('images').values(row).execute();
      } catch (err) {
        // No catalogue entry, no copy: a refused insert (a name taken meanwhile) leaves the pool as it was.
        if (checked.imported && row.path) await discard(row.path);
        throw err;
      }
      await events.emit({ type: 'image.created', objectKind: 'image', objectId: row.id, message: `image ${row.name} created` });
      return imageFromRow(row);
    },
    async remove(idOrName: string) {
      const row = await find(idOrName);
      const user = await db.selectFrom('vms').select('name').where('image_id', '=', row.id).executeTakeFirst();
      if (user) throw new AppError('IMAGE_IN_USE', `image ${row.name} is used by VM ${user.name}`, { vm: user.name });
      await db.deleteFrom('images').where('id', '=', row.id).execute();
      // The pool's copy goes with its image; a file registered by path belongs to whoever put it there.
      if (row.imported && row.path) await discard(row.path);
      await events.emit({ type: 'image.deleted', objectKind: 'image', objectId: row.id, message: `image ${row.name} deleted` });
    },
  };
}

export type ImageService = ReturnType<typeof createImageService>;
