// The ordered list of schema migrations; they only move forward.
import type { Kysely } from 'kysely';
import * as m001 from './001_initial.ts';
import * as m002 from './002_host_credential_index.ts';
import * as m003 from './003_image_ready_text.ts';
import * as m004 from './004_vm_local_disk.ts';
import * as m005 from './005_unique_names_and_active_tasks.ts';
import * as m006 from './006_token_expiry.ts';
import * as m007 from './007_image_imported.ts';
import * as m008 from './008_vm_spec_status.ts';
import * as m011 from './011_host_status.ts';

export interface Migration {
  version: number;
  name: string;
  up(db: Kysely<any>, dialect: 'sqlite' | 'postgres'): Promise<void>;
}

export const migrations: Migration[] = [
  { version: 1, name: 'initial', up: m001.up },
  { version: 2, name: 'host_credential_index', up: m002.up },
  { version: 3, name: 'image_ready_text', up: m003.up },
  { version: 4, name: 'vm_local_disk', up: m004.up },
  { version: 5, name: 'unique_names_and_active_tasks', up: m005.up },
  { version: 6, name: 'token_expiry', up: m006.up },
  { version: 7, name: 'image_imported', up: m007.up },
  { version: 8, name: 'vm_spec_status', up: m008.up },
  { version: 11, name: 'host_status', up: m011.up },
];
