import { runCli } from "./cli";

const stopping = new AbortController();
// The first signal stops kv in order (a locked command is stopped, the lock released); a
// second one at once — `kv lock` kills its command's process group on the way out.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => (stopping.signal.aborted ? process.exit(signal === "SIGINT" ? 130 : 143) : stopping.abort(signal)));
}

const code = await runCli(process.argv.slice(2), {
  env: process.env,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  signal: stopping.signal,
});
// Exit once what was written has been handed on (a pipe may still be draining), whatever
// timers or sockets a library left behind.
process.exitCode = code;
process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
