// A TCP link on loopback between an agent and control that a test can cut and restore: every byte goes
// through real sockets; cut() resets the open connections and refuses new ones until restore().
import { type Server, type Socket, createConnection, createServer } from 'node:net';

export interface Link {
  /** The URL to give the agent instead of control's. */
  url: string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function createLink(target: string): Promise<Link> {
  const { hostname, port } = new URL(target);
  const open = new Set<Socket>();
  let up = true;
  const server: Server = createServer((client) => {
    if (!up) return client.resetAndDestroy();
    const upstream = createConnection({ host: hostname, port: Number(port) });
    open.add(client);
    open.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const local = typeof address === 'object' && address ? address.port : 0;
  const cut = () => {
    up = false;
    for (const s of open) s.resetAndDestroy();
    open.clear();
  };
  return {
    url: `http://127.0.0.1:${local}`,
    cut,
    restore() {
      up = true;
    },
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
