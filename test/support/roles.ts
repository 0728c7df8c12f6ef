// Cloud Control without agents, driven by app.inject, with one API token per role: for tests of who may
// do what.
import { type Control, type ControlConfig, createControl } from '../../src/control/app.ts';
import type { Role } from '../../src/control/features/auth/service.ts';
import { createLogger } from '../../src/lib/logger.ts';
import { TEST_SCRYPT_COST } from './cluster.ts';

export interface RoleControl {
  control: Control;
  /** A fresh API token of a user with this role (a fresh one each call: a route may revoke the one it got). */
  tokenFor(role: Role): Promise<string>;
  close(): Promise<void>;
}

export async function startRoleControl(config: Partial<ControlConfig> = {}): Promise<RoleControl> {
  const control = await createControl({
    db: 'sqlite::memory:', adminPassword: 'admin-password', log: createLogger('test', process.env.AWAN_TEST_LOG ?? 'silent'),
    inspectImage: async () => ({ sizeMiB: 1 }), ...config, auth: { scryptCost: TEST_SCRYPT_COST, ...config.auth },
  });
  await control.start();
  const users = new Map<Role, string>();
  users.set('admin', (await control.db.selectFrom('users').select('id').where('username', '=', 'admin').executeTakeFirstOrThrow()).id);
  for (const role of ['operator', 'viewer'] as const) users.set(role, (await control.auth.createUser(`a-${role}`, `${role}-password`, role)).id);
  return {
    control,
    async tokenFor(role) {
      return (await control.auth.createApiToken(users.get(role)!, `test-${role}`)).token;
    },
    close: () => control.close(),
  };
}
