import { runCli } from "./cli";

const stopping = new AbortController();
// The first signal stops kv in order (a locked command is stopped, the lock released); a second one at once.
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => (stopping.signal.aborted ? process.exit(130) : stopping.abort()));

const code = await runCli(process.argv.slice(2), {
  env: process.env,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  signal: stopping.signal,
});
// stdout and stderr are synchronous for files and pipes on Linux: nothing written is lost.
process.exit(code);
