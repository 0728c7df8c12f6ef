// Password hashing with scrypt: a per-password salt, parameters stored beside the hash so they can grow.
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** scrypt's work factors: N (CPU and memory cost, a power of two), r (block size), p (parallelism). */
export interface ScryptCost {
  N: number;
  r: number;
  p: number;
}

/** OWASP's recommendation for scrypt: about half a second and 128 MiB per hash on these machines. */
export const DEFAULT_SCRYPT_COST: ScryptCost = { N: 2 ** 17, r: 8, p: 1 };

/** Stored hashes asking for more than this are refused rather than allowed to exhaust memory. */
const MAX_N = 2 ** 20;
const KEYLEN = 32;

// OpenSSL needs 128·r·(N+2) bytes for V plus 128·r·p for B; Node's default cap (32 MiB) is below N=2^17.
const maxmemFor = ({ N, r, p }: ScryptCost) => 128 * r * (N + 2) + 128 * r * p + 1024 * 1024;

// The async form runs on libuv's pool: a login never blocks the event loop for the half second it takes.
const scrypt = (password: string, salt: Buffer, keylen: number, cost: ScryptCost) =>
  new Promise<Buffer>((resolve, reject) => {
    const opts: ScryptOptions = { N: cost.N, r: cost.r, p: cost.p, maxmem: maxmemFor(cost) };
    scryptCb(password, salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });

export async function hashPassword(password: string, cost: ScryptCost = DEFAULT_SCRYPT_COST): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, KEYLEN, cost);
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** The parameters a stored hash was made with, or undefined when it is not a hash this module made. */
export function parseHash(stored: string): (ScryptCost & { salt: Buffer; key: Buffer }) | undefined {
  const [scheme, n, r, p, salt, key, ...rest] = stored.split('$');
  if (scheme !== 'scrypt' || !salt || !key || rest.length > 0) return undefined;
  const cost = { N: Number(n), r: Number(r), p: Number(p) };
  const sane = Number.isInteger(cost.N) && cost.N > 1 && cost.N <= MAX_N && (cost.N & (cost.N - 1)) === 0
    && Number.isInteger(cost.r) && cost.r >= 1 && cost.r <= 32 && Number.isInteger(cost.p) && cost.p >= 1 && cost.p <= 16;
  if (!sane) return undefined;
  return { ...cost, salt: Buffer.from(salt, 'base64'), key: Buffer.from(key, 'base64') };
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parseHash(stored);
  if (!parsed || parsed.key.length === 0) return false;
  const actual = await scrypt(password, parsed.salt, parsed.key.length, parsed);
  return timingSafeEqual(actual, parsed.key);
}

/** True when a stored hash is weaker than `cost` in any factor, so the next good login stores a new one. */
export function needsRehash(stored: string, cost: ScryptCost = DEFAULT_SCRYPT_COST): boolean {
  const parsed = parseHash(stored);
  return !parsed || parsed.N < cost.N || parsed.r < cost.r || parsed.p < cost.p;
}
