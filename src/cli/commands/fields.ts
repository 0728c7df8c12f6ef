// The API names what was wrong by its own field paths (`body.diskGiB`, `querystring.limit`); a CLI user
// typed flags. This turns those paths into the flag or argument of the command that sent them.
import type { Command } from 'commander';

const overrides = new WeakMap<Command, Record<string, string>>();

/** Fields whose flag is not the field's own name in kebab case: `{ placementLabels: '--label' }`. */
export function fieldFlags<C extends Command>(cmd: C, map: Record<string, string>): C {
  overrides.set(cmd, { ...overrides.get(cmd), ...map });
  return cmd;
}

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** `diskGiB` → `disk`, `targetId` → `target`, `kernelPath` → `kernel`: flags leave out units and kinds. */
const bare = (field: string) => field.replace(/(?<=[a-z])(MiB|GiB|Ms|Id|Path)$/, '');

/** The flag or ARGUMENT of `cmd` that sets this API field, or undefined when the command has none. */
export function flagFor(cmd: Command, field: string): string | undefined {
  const explicit = overrides.get(cmd)?.[field];
  if (explicit) return explicit;
  const longs = new Set(cmd.options.map((o) => o.long));
  for (const name of new Set([kebab(field), kebab(bare(field))])) {
    if (longs.has(`--${name}`)) return `--${name}`;
    if (longs.has(`--no-${name}`)) return `--no-${name}`;
  }
  const arg = cmd.registeredArguments.find((a) => a.name() === field || (field === 'id' && cmd.registeredArguments.indexOf(a) === 0));
  return arg ? arg.name().toUpperCase() : undefined;
}

const PATH = /\b(body|querystring|params)((?:[./][A-Za-z_][\w]*)*)/g;

/**
 * The message with API field paths in CLI words: `body.diskGiB must be <= 65536` → `--disk must be <=
 * 65536`, `body must have required property 'cpus'` → `--cpus is required`. Paths no flag sets stay.
 */
export function inCliWords(cmd: Command, message: string): string {
  const required = /\b(?:body|querystring|params)\S* must have required property '(\w+)'/.exec(message);
  if (required) {
    const flag = flagFor(cmd, required[1]);
    if (flag) return message.replace(required[0], `${flag} is required`);
  }
  return message.replace(PATH, (whole, _where: string, path: string) => {
    const field = path.split(/[./]/).filter(Boolean)[0];
    return (field && flagFor(cmd, field)) || whole;
  });
}

/** `awan vm create`: the words a user types to reach this command, for "see awan vm create --help". */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}
