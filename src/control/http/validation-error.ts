// Turns a failed schema check into the words of the one error body: which field, what it must be, what was
// sent, and for a choice the values it may take, so a person (or the CLI, from `details`) can fix the call.
import type { FastifySchemaValidationError } from 'fastify';
import { AppError } from '../errors.ts';

type Issue = FastifySchemaValidationError;

export interface ValidationInput {
  /** Which part of the request failed: body, querystring, params or headers. */
  part: string;
  /** That part as the server received it, to quote the offending value. */
  value: unknown;
  /** That part's JSON Schema, to find the choices of a union. */
  schema: unknown;
}

export function validationError(issues: Issue[], input: ValidationInput): AppError {
  // Ajv stops at the first failing keyword; errors its branches collected on the way come before it.
  const primary = issues[issues.length - 1];
  const causes = issues.slice(0, -1);
  const { path, text, allowed } = describe(primary, causes, input);
  const field = path ? `${input.part}.${path}` : input.part;
  const details: Record<string, unknown> = { field, in: input.part, issues: issues.slice(0, 10) };
  if (allowed) details.allowed = allowed;
  return new AppError('VALIDATION_FAILED', `${field} ${text}`, details);
}

interface Description {
  path: string;
  text: string;
  allowed?: unknown[];
}

function describe(e: Issue | undefined, causes: Issue[], input: ValidationInput): Description {
  if (!e) return { path: '', text: 'is invalid' };
  const path = dotted(e.instancePath);
  const got = gotText(at(input.value, e.instancePath));
  switch (e.keyword) {
    case 'required':
      return { path: join(path, String(e.params.missingProperty)), text: 'is required' };
    case 'additionalProperties':
      return { path: join(path, String(e.params.additionalProperty)), text: 'is not a known field' };
    case 'propertyNames':
      return { path, text: describeKey(String(e.params.propertyName), causes.at(-1)) };
    case 'enum':
      return oneOf(path, e.params.allowedValues as unknown[], got);
    case 'const':
      return oneOf(path, [e.params.allowedValue], got);
    case 'anyOf':
    case 'oneOf': {
      const branches = resolve(input.schema, e.schemaPath);
      if (Array.isArray(branches) && branches.length > 0 && branches.every((b) => isObject(b) && 'const' in b)) {
        return oneOf(path, branches.map((b) => (b as { const: unknown }).const), got);
      }
      if (causes.length > 0 && causes.every((c) => c.instancePath === e.instancePath && c.keyword === 'type')) {
        return { path, text: `must be ${[...new Set(causes.map((c) => String(c.params.type)))].join(' or ')}${got}` };
      }
      // The branch that got furthest into the value is the one the client meant.
      const deepest = causes.reduce<Issue | undefined>((best, c) => (!best || depth(c) > depth(best) ? c : best), undefined);
      return deepest ? describe(deepest, [], input) : { path, text: `${e.message ?? 'is invalid'}${got}` };
    }
    case 'minimum':
      return { path, text: `must be at least ${String(e.params.limit)}${got}` };
    case 'maximum':
      return { path, text: `must be at most ${String(e.params.limit)}${got}` };
    case 'minLength':
      return { path, text: `${e.params.limit === 1 ? 'must not be empty' : `must be at least ${String(e.params.limit)} characters long`}${got}` };
    case 'maxLength':
      return { path, text: `must be at most ${String(e.params.limit)} characters long${got}` };
    default:
      return { path, text: `${e.message ?? 'is invalid'}${got}` };
  }
}

const depth = (e: Issue) => pointerParts(e.instancePath).length;

function oneOf(path: string, allowed: unknown[], got: string): Description {
  return { path, text: `must be one of ${allowed.map(String).join(', ')}${got}`, allowed };
}

function describeKey(key: string, cause: Issue | undefined): string {
  if (key === '') return 'has an empty key';
  switch (cause?.keyword) {
    case 'maxLength':
      return `has a key '${key}' longer than ${String(cause.params.limit)} characters`;
    case 'pattern':
      return `has a key '${key}' that does not match ${String(cause.params.pattern)}`;
    default:
      return `has a key '${key}' that is not allowed`;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;

/** `/placementLabels/disk` → `placementLabels.disk`, the way the API's fields are written in messages. */
const dotted = (pointer: string) => pointerParts(pointer).join('.');
const join = (a: string, b: string) => (a ? `${a}.${b}` : b);
const pointerParts = (pointer: string) =>
  pointer.split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));

function at(value: unknown, pointer: string): unknown {
  let v = value;
  for (const part of pointerParts(pointer)) v = isObject(v) ? v[part] : undefined;
  return v;
}

function resolve(schema: unknown, schemaPath: string): unknown {
  if (!schemaPath.startsWith('#')) return undefined;
  return at(schema, schemaPath.slice(1));
}

function gotText(v: unknown): string {
  if (v === undefined) return '';
  const shown = typeof v === 'string' ? `'${v}'` : JSON.stringify(v);
  return ` (got ${shown.length > 60 ? `${shown.slice(0, 57)}...` : shown})`;
}
