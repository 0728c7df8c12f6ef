// Reads a secret: from the terminal without echoing it, or one line at a time from a pipe.
import { CliError } from './shared.ts';

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

/** A piped stream's lines, read to its end: a pipe gives its secrets one per line (`printf 'old\nnew\n' | …`). */
export async function linesOf(stream: NodeJS.ReadableStream): Promise<string[]> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  const lines = Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
  // The text after the last newline is a line only when it is not empty.
  if (lines.at(-1) === '') lines.pop();
  return lines;
}

let pipedLines: Promise<string[]> | undefined;
let nextPipedLine = 0;

/**
 * Asks on a terminal; without one, takes the next line of standard input, so scripts and tests can pipe
 * secrets in. `missing` is the error when input ends first (a script that gave none: /dev/null, say).
 */
export async function readSecret(question: string, missing: string): Promise<string> {
  if (process.stdin.isTTY) return promptHidden(question);
  pipedLines ??= linesOf(process.stdin);
  const lines = await pipedLines;
  if (nextPipedLine >= lines.length) throw new CliError('BAD_REQUEST', missing);
  return lines[nextPipedLine++];
}
