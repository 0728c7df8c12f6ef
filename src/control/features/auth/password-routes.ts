// Password changes: an admin sets anyone's, every user changes their own by giving the current one.
import { Type } from 'typebox';
import { type App, IdParams, errors, requireRole } from '../../http/types.ts';
import type { AuthService } from './service.ts';

/** The same bounds as a new user's password. */
const Password = Type.String({ minLength: 8, maxLength: 1024, description: 'at least 8 characters' });

const Changed = Type.Object({
  user: Type.Object({ id: Type.String(), username: Type.String() }),
  /** Sessions and API tokens of the user that stopped working: every one but the caller's own. */
  revokedTokens: Type.Integer(),
});

const revokes = 'Every other session and API token of that user is revoked; the token that makes the call stays valid.';

export function passwordRoutes(app: App, auth: AuthService): void {
  app.put('/api/v1/users/:id/password', {
    config: { role: 'admin' },
    schema: {
      tags: ['users'],
      summary: "Set a user's password (admin)",
      description: `The user is named by id or user name. ${revokes}`,
      params: IdParams,
      body: Type.Object({ password: Password }, { additionalProperties: false }),
      response: { 200: Changed, ...errors },
    },
  }, async (req) => {
    const by = requireRole(req.principal, 'admin');
    return auth.setPassword(req.params.id, req.body.password, by);
  });

  app.post('/api/v1/auth/password', {
    config: { role: 'viewer' },
    schema: {
      tags: ['auth'],
      summary: 'Change your own password',
      description: `A wrong current password is 403 WRONG_PASSWORD and changes nothing. ${revokes}`,
      body: Type.Object({ currentPassword: Type.String({ minLength: 1, maxLength: 1024 }), newPassword: Password }, { additionalProperties: false }),
      response: { 200: Changed, ...errors },
    },
  }, async (req) => {
    const by = requireRole(req.principal, 'viewer');
    return auth.changeOwnPassword(by, req.body.currentPassword, req.body.newPassword);
  });
}
