import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { get as httpGet } from "node:http";
import { get as httpsGet } from "node:https";
import { dirname, join } from "node:path";

/** How {@link startServerProcess} and {@link spawnServerProcess} run the server: its environment, arguments, entry file and patience. */
export interface ServerProcessOptions {
  /**
   * `KV_*` settings over the harness's defaults: `KV_HOST` 127.0.0.1, `KV_PORT` 0 (a free port),
   * `KV_STORE` memory and `KV_LOG_LEVEL` info (the harness learns the port from the line logged
   * at that level). `undefined` drops a default, leaving the server's own (e.g. `KV_STORE:
   * undefined` is LMDB in `cwd`). Nothing else is inherited but `PATH`: not `NODE_PATH`.
   */
  env?: Record<string, string | undefined>;
  /** Command-line arguments after the entry file. */
  args?: string[];
  /** The server's entry file (default: the monorepo's built `apps/server/dist/main.js`). */
  entry?: string;
  /** The server's working directory (default: this process's). */
  cwd?: string;
  /** How long to wait for the server to listen and answer `/readyz` (default 10 s). */
  readyTimeoutMs?: number;
  /** For a server on HTTPS: the CA to trust while waiting for `/readyz` (PEM). */
  tlsCa?: string;
}

/** A kv server child process, from its spawn on: it may still be starting, or have failed to. */
export interface SpawnedServer {
  readonly pid: number;
  /** Resolves with the address the server logged, e.g. `http://127.0.0.1:<port>`; rejects, with its output, when it exits first or logs none within `readyTimeoutMs`. */
  readonly listening: Promise<string>;
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  /** Sends `signal` unless the process has exited. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM, then the exit code; SIGKILL (and null) if it has not exited within `timeoutMs` (default 15 s). */
  stop(options?: { timeoutMs?: number }): Promise<number | null>;
  /** SIGKILL: a crash. Resolves once the process is gone. */
  kill(): Promise<void>;
  /** SIGSTOP: the process stays, its sockets stay open, and nothing is answered. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** What it wrote to stdout so far. */
  stdout(): string;
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** Everything it wrote to stdout and stderr so far, interleaved. */
  output(): string;
}

/** A built kv server running as a child process, listening and ready. */
export interface ServerProcess extends SpawnedServer {
  /** The address the server logged, e.g. `http://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
}

const LISTENING = /Server listening at (https?:\/\/[^\s"]+)/;
const READY_POLL_MS = 20;
const STOP_TIMEOUT_MS = 15_000;

// Children still running when the test process exits are killed with it, whatever the tests did.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** The status of a GET to `url` (http or https, trusting `ca`), or undefined when it fails or takes a second. Its connection closes: it must not count among the server's. */
function statusOf(url: string, ca: string | undefined): Promise<number | undefined> {
  return new Promise((resolve) => {
    const get = url.startsWith("https:") ? httpsGet : httpGet;
    const request = get(url, { ca, timeout: 1_000, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    request.on("timeout", () => request.destroy());
    request.on("error", () => resolve(undefined));
  });
}

/** Where the built server is: `apps/server/dist/main.js` under the workspace root above `from`. */
export function findServerEntry(from = process.cwd()): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "pnpm-workspace.yaml"))) return join(dir, "apps", "server", "dist", "main.js");
    if (dirname(dir) === dir) throw new Error(`no pnpm-workspace.yaml above ${from}: pass the server's entry`);
  }
}

/**
 * Starts the built kv server and returns at once, without waiting for it to listen: for tests
 * of how it starts, or fails to. The process is killed if this one exits first.
 */
export function spawnServerProcess(options: ServerProcessOptions = {}): SpawnedServer {
  const entry = options.entry ?? findServerEntry();
  if (!existsSync(entry)) throw new Error(`${entry} does not exist: build the server first (pnpm build)`);
  const env: Record<string, string | undefined> = {
    PATH: process.env.PATH,
    KV_HOST: "127.0.0.1",
    KV_PORT: "0",
    KV_STORE: "memory",
    KV_LOG_LEVEL: "info",
    ...options.env,
  };
  for (const name of Object.keys(env)) if (env[name] === undefined) delete env[name];
  const child: ChildProcess = spawn(process.execPath, [entry, ...(options.args ?? [])], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
    ...(options.cwd !== undefined && { cwd: options.cwd }),
  });
  running.add(child);
  let stdout = "";
  let stderr = "";
  let output = "";
  child.stdout?.on("data", (chunk) => ((stdout += chunk), (output += chunk)));
  child.stderr?.on("data", (chunk) => ((stderr += chunk), (output += chunk)));
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  const timeoutMs = options.readyTimeoutMs ?? 10_000;
  const listening = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`server did not log its address within ${timeoutMs} ms:\n${output}`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err);
    };
    const onData = () => {
      const match = LISTENING.exec(stdout);
      if (match?.[1] === undefined) return;
      clearTimeout(timer);
      child.stdout?.off("data", onData);
      resolve(match[1]);
    };
    child.stdout?.on("data", onData);
    void exited.then((code) => fail(new Error(`server exited with ${code} before listening:\n${output}`)));
  });
  listening.catch(() => {}); // awaited only by those that expect it to start

  const signal = (name: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(name);
  };
  return {
    pid: child.pid as number,
    listening,
    exited,
    signal,
    stop: async ({ timeoutMs: stopMs = STOP_TIMEOUT_MS } = {}) => {
      signal("SIGCONT"); // a paused process cannot handle SIGTERM
      signal("SIGTERM");
      const timer = setTimeout(() => signal("SIGKILL"), stopMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    kill: async () => {
      signal("SIGKILL");
      await exited;
    },
    pause: () => signal("SIGSTOP"),
    resume: () => signal("SIGCONT"),
    stdout: () => stdout,
    stderr: () => stderr,
    output: () => output,
  };
}

/**
 * Starts the built kv server (on 127.0.0.1 unless `env` says otherwise) and resolves once
 * `/readyz` answers 200. Rejects, with the process's output, when it exits first or is not
 * ready in time, and kills it.
 */
export async function startServerProcess(options: ServerProcessOptions = {}): Promise<ServerProcess> {
  const server = spawnServerProcess(options);
  const timeoutMs = options.readyTimeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  let hasExited = false;
  void server.exited.then(() => (hasExited = true));
  try {
    const url = await server.listening;
    while ((await statusOf(`${url}/readyz`, options.tlsCa)) !== 200) {
      if (hasExited) throw new Error(`server exited with ${await server.exited} before it was ready:\n${server.output()}`);
      if (Date.now() > deadline) throw new Error(`server at ${url} not ready within ${timeoutMs} ms:\n${server.output()}`);
      await new Promise((r) => setTimeout(r, READY_POLL_MS));
    }
    return { ...server, url, port: Number(new URL(url).port) };
  } catch (err) {
    await server.kill();
    throw err;
  }
}
