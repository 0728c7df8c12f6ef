// Cursor pagination shared by every list route: an opaque cursor encodes the sort key of the last row.
import { Type } from 'typebox';
import { AppError } from '../errors.ts';

export const PageQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 512 })),
};

export interface Cursor {
  at: string;
  id: string;
}

export const encodeCursor = (c: Cursor): string => Buffer.from(`${c.at}|${c.id}`).toString('base64url');

export function decodeCursor(raw: string | undefined): Cursor | undefined {
  if (!raw) return undefined;
  const text = Buffer.from(raw, 'base64url').toString('utf8');
  const bar = text.indexOf('|');
  if (bar < 1) throw new AppError('BAD_REQUEST', 'cursor is not valid', { cursor: raw });
  return { at: text.slice(0, bar), id: text.slice(bar + 1) };
}

/** Splits one extra fetched row off into the next cursor. */
export function page<T>(rows: T[], limit: number, key: (r: T) => Cursor): { items: T[]; nextCursor: string | null } {
  if (rows.length <= limit) return { items: rows, nextCursor: null };
  const items = rows.slice(0, limit);
  return { items, nextCursor: encodeCursor(key(items[items.length - 1])) };
}

export const PageOf = <T extends import('typebox').TSchema>(item: T) =>
  Type.Object({ items: Type.Array(item), nextCursor: Type.Union([Type.String(), Type.Null()]) });
