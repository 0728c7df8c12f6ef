// Labels on hosts and the placement labels VMs ask for: one shape for both, since one is matched against
// the other.
import { Type } from 'typebox';

export const labelKeyPattern = '^[a-zA-Z0-9._/-]+$';

/**
 * Keys are checked with `propertyNames`: TypeBox turns a Record's key schema into a pattern that matches
 * any key and drops its length limits, and a key the pattern missed would escape the value check too.
 */
export const Labels = Type.Record(Type.String(), Type.String({ maxLength: 63 }), {
  propertyNames: { type: 'string', minLength: 1, maxLength: 63, pattern: labelKeyPattern },
  maxProperties: 64,
  description: `key=value pairs; keys are 1 to 63 of letters, digits and . _ / -, values are strings of up to 63 characters`,
});
