// Identifiers and secrets: random, URL-safe, and hashed before they are stored.
import { createHash, randomBytes, randomUUID } from 'node:crypto';

export const newId = (): string => randomUUID();

/** Whether a string has the shape of an id from `newId`: such a name would shadow the object that has it as id. */
export const looksLikeId = (s: string): boolean => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

/** A secret handed out once (token, credential): 32 random bytes, base64url. */
export const newSecret = (prefix: string): string => `${prefix}_${randomBytes(32).toString('base64url')}`;

/** Tokens are long random secrets, so one fast hash is enough to store them safely (unlike passwords). */
export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');

/** A locally administered, unicast MAC derived from the VM id and NIC index, stable across restarts. */
export function macFor(vmId: string, index: number): string {
  const h = createHash('sha256').update(`${vmId}/${index}`).digest();
  const bytes = [0x52, 0x54, 0x00, h[0], h[1], h[2]];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
