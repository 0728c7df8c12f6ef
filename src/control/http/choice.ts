// A parameter that takes one of a few known words, as a union of literals: a wrong word is refused with the
// list of right ones (see validation-error.ts) instead of matching nothing.
import { type TLiteral, type TUnion, Type } from 'typebox';

export function OneOf<const T extends readonly string[]>(values: T, options: { description?: string } = {}): TUnion<TLiteral<T[number]>[]> {
  return Type.Union(values.map((v: T[number]) => Type.Literal(v)), options);
}
