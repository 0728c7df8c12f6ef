// Every route declares the role it needs, and the one check holds for all of them: walked over the whole
// route table with no token and with each role.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Role } from '../../src/control/features/auth/service.ts';
import { routeTable } from '../../src/control/http/roles.ts';
import { type RoleControl, startRoleControl } from '../support/roles.ts';

const roles: Role[] = ['viewer', 'operator', 'admin'];
const rank: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

describe('roles on every route', () => {
  let rc: RoleControl;
  before(async () => {
    rc = await startRoleControl();
    await rc.control.app.ready();
  });
  after(async () => { await rc?.close(); });

  it('answers 401 without a token, 403 below the declared role, and neither at or above it', async () => {
    const table = routeTable(rc.control.app);
    const paths = new Set(table.map((r) => r.url));
    for (const known of ['/api/v1/vms', '/api/v1/hosts/join-tokens', '/api/v1/vms/:id/console/tickets', '/metrics']) assert.ok(paths.has(known), `${known} is in the table`);
    let checked = 0;
    for (const route of table) {
      // A made-up id for every parameter: the role is decided before the route looks anything up.
      const url = route.url.replace(/:[A-Za-z]+/g, 'no-such-id').replace(/\*$/, 'x');
      const call = async (token?: string) => {
        const res = await rc.control.app.inject({
          method: route.method as 'GET', url,
          headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(route.method === 'GET' || route.method === 'HEAD' ? {} : { 'content-type': 'application/json' }) },
          ...(route.method === 'GET' || route.method === 'HEAD' ? {} : { payload: '{}' }),
        });
        return res.statusCode;
      };
      const what = `${route.method} ${route.url} (declares ${route.role})`;
      assert.ok(route.role, `${what} declares a role`);
      if (route.role === 'public') {
        assert.ok(![401, 403].includes(await call()), `${what} without a token`);
        continue;
      }
      if (route.role === 'agent') {
        // Node Control's own endpoints: a user's token, even an admin's, is not a host credential.
        const without = await call();
        assert.ok(without >= 400 && without < 500, `${what} without a credential gave ${without}`);
        assert.equal(await call(await rc.tokenFor('admin')), without, `${what} with a user's token`);
        continue;
      }
      assert.equal(await call(), 401, `${what} without a token`);
      assert.equal(await call('awt_not-a-token'), 401, `${what} with a bad token`);
      for (const role of roles) {
        const status = await call(await rc.tokenFor(role));
        if (rank[role] < rank[route.role]) assert.equal(status, 403, `${what} as ${role}`);
        else assert.ok(![401, 403].includes(status), `${what} as ${role} gave ${status}`);
      }
      checked++;
    }
    assert.ok(checked >= 25, `walked ${checked} protected routes`);
  });

  it('refuses to start when a route declares no role', async () => {
    const rc2 = await startRoleControl();
    try {
      rc2.control.app.get('/api/v1/forgotten', { schema: { hide: true } }, () => ({}));
      await assert.rejects(async () => { await rc2.control.app.ready(); }, /routes without a declared role \(config\.role\): GET \/api\/v1\/forgotten/);
    } finally {
      await rc2.close().catch(() => undefined);
    }
  });
});
