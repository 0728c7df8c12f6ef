// The database is the judge of uniqueness (names, one active task per VM): this recognises its verdict on
// either engine and turns it into the 409 the API answers, so a lost race is never a 500.
import { AppError } from '../errors.ts';

export interface UniqueViolation {
  table: string;
  columns: string[];
  /** The value that clashed, when the engine says (PostgreSQL does, SQLite does not). */
  value?: string;
}

/** SQLite's SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY and PostgreSQL's 23505, or undefined for anything else. */
export function uniqueViolation(err: unknown): UniqueViolation | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as { code?: unknown; message?: unknown; table?: unknown; detail?: unknown };
  if (e.code === 'SQLITE_CONSTRAINT_UNIQUE' || e.code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
    // "UNIQUE constraint failed: vms.name" (one or more table.column, comma-separated)
    const m = /constraint failed: (.+)$/.exec(String(e.message));
    const parts = (m?.[1] ?? '').split(',').map((p) => p.trim().split('.'));
    const table = parts[0]?.[0] ?? '';
    return { table, columns: parts.map((p) => p[1] ?? '').filter(Boolean) };
  }
  if (e.code === '23505') {
    // detail: "Key (name)=(web-1) already exists."
    const m = /Key \((.+?)\)=\((.*)\) already exists/.exec(String(e.detail ?? ''));
    return { table: String(e.table ?? ''), columns: m ? m[1].split(',').map((c) => c.trim()) : [], ...(m ? { value: m[2] } : {}) };
  }
  return undefined;
}

/** What a user calls the object each table with a unique name holds, and the name's column. */
const named: Record<string, { kind: string; column: string }> = {
  vms: { kind: 'VM', column: 'name' },
  images: { kind: 'image', column: 'name' },
  hosts: { kind: 'host', column: 'name' },
  users: { kind: 'user', column: 'username' },
};

/** The API error for a unique violation, or undefined when `err` is not one. */
export function uniqueConflict(err: unknown): AppError | undefined {
  const v = uniqueViolation(err);
  if (!v) return undefined;
  const n = named[v.table];
  if (n && v.columns.includes(n.column)) {
    const which = v.value !== undefined ? ` named ${v.value}` : ' with that name';
    return new AppError('NAME_TAKEN', `a ${n.kind}${which} already exists`, { kind: n.kind, ...(v.value !== undefined ? { name: v.value } : {}) });
  }
  if (v.table === 'tasks' && v.columns.includes('target_id')) {
    return new AppError('VM_BUSY', 'the VM is busy with another task; wait for it to finish, or cancel it', v.value !== undefined ? { vmId: v.value } : undefined);
  }
  return new AppError('CONFLICT', `the change conflicts with an existing ${v.table} record`, { table: v.table, columns: v.columns });
}
