// Server messages and tasks name objects by id; people know them by name. This swaps the ids of VMs, hosts
// and images for their names, fetching the lists once per process and only when an id shows up.
import type { ApiClient, Page } from './client.ts';

const UUID = /\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/gi;

interface Known {
  names: Promise<Map<string, string>>;
  refreshed: boolean;
}

const known = new WeakMap<ApiClient, Known>();

async function fetchNames(api: ApiClient): Promise<Map<string, string>> {
  // Each list on its own: a user who may not read one kind still gets the others' names.
  const lists = await Promise.all(
    ['/api/v1/vms?limit=1000', '/api/v1/hosts', '/api/v1/images?limit=1000'].map((path) =>
      api.request<Page<{ id: string; name: string }>>('GET', path, undefined, { names: false }).then((p) => p.items, () => []),
    ),
  );
  return new Map(lists.flat().map((x) => [x.id, x.name]));
}

/** Id → name for these ids; ids of no known VM, host or image (deleted objects, tasks) are absent. */
export async function namesOf(api: ApiClient, ids: Iterable<string>): Promise<Map<string, string>> {
  const wanted = [...ids];
  if (wanted.length === 0) return new Map();
  let k = known.get(api);
  if (!k) {
    k = { names: fetchNames(api), refreshed: false };
    known.set(api, k);
  }
  let names = await k.names;
  // An object made after the lists were fetched (the VM this command created) refreshes them, once.
  if (!k.refreshed && wanted.some((id) => !names.has(id))) {
    k.refreshed = true;
    k.names = fetchNames(api);
    names = await k.names;
  }
  return names;
}

/** The text with every id of a known VM, host or image replaced by its name. */
export async function withNames(api: ApiClient, text: string): Promise<string> {
  const ids = new Set(text.match(UUID) ?? []);
  if (ids.size === 0) return text;
  const names = await namesOf(api, ids);
  return text.replace(UUID, (id) => names.get(id) ?? id);
}
