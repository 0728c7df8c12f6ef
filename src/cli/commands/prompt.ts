// Reads a secret: asked without echo on a terminal, or the first line of standard input when it is piped.

/** The password from a terminal (no echo) or, in a script (`echo pw | awan login`), from standard input. */
export function readSecret(question: string, stdin: NodeJS.ReadStream = process.stdin): Promise<string> {
  return stdin.isTTY ? promptHidden(question, stdin) : firstLine(stdin);
}

/** The first line of a piped stream, without its line end; empty when the stream is. */
export async function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  let text = '';
  for await (const chunk of stream) {
    text += typeof chunk === 'string' ? chunk : (chunk as Buffer).toString('utf8');
    // Stop at the first line: the writer may keep the pipe open.
    if (text.includes('\n')) break;
  }
  return text.split(/\r?\n/)[0];
}

/** Asks on stderr (stdout may be piped) and reads a line from a TTY stdin in raw mode. */
export function promptHidden(question: string, stdin: NodeJS.ReadStream = process.stdin): Promise<string> {
  if (!stdin.isTTY) return Promise.reject(new Error('no terminal to ask for the password on'));
  process.stderr.write(question);
  return new Promise((resolve, reject) => {
    let value = '';
    const finish = (err?: Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return finish();
        // Raw mode swallows Ctrl-C, so honour it by hand.
        if (ch === '\u0003') return finish(new Error('cancelled'));
        if (ch === '\u0004' && value === '') return finish(new Error('cancelled'));
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else if (ch >= ' ') value += ch;
      }
    };
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}
