// Request validation by part: JSON bodies are checked as sent, while query strings, path parameters and
// headers, which arrive as text, may have their numbers and booleans read from that text.
import { Ajv, type Options } from 'ajv';
import type { FastifySchemaCompiler } from 'fastify';

// Unknown fields are refused, not silently dropped (FACTS.md); defaults fill what the client left out.
const common: Options = { removeAdditional: false, useDefaults: true, allErrors: false };

/** One Ajv instance per kind of input, made per server so that no compiled schema is shared between apps. */
export function createValidatorCompiler(): FastifySchemaCompiler<unknown> {
  // A JSON body already carries its types: `"256"` for a number or `true` for a count is a client's mistake.
  const typed = new Ajv({ ...common, coerceTypes: false });
  // `?limit=5` can only be text; 'array' also lets `?x=a` stand for a one-element list.
  const text = new Ajv({ ...common, coerceTypes: 'array' });
  return ({ schema, httpPart }) => (httpPart === 'body' ? typed : text).compile(schema as object);
}
