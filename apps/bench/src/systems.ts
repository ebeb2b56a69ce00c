// Every system the suite measures, each a process of its own on 127.0.0.1, started here and
// stopped here: kv's built server, etcd (Debian's etcd-server), Redis (Debian's redis-server)
// and a bare Fastify route. The load generator is this process, and nothing else.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startEtcdCluster, startServerProcess } from "@kv/testkit";

/** A process of a system under test. */
export interface Server {
  readonly url: string;
  /** With `startKv(…, { inspect: true })`: the server's inspector, `ws://127.0.0.1:<port>/<id>`. */
  readonly inspectorUrl?: string;
  /** The processes whose CPU time counts as this system's. */
  readonly pids: readonly number[];
  /** Stops it and removes its data; idempotent. */
  stop(): Promise<void>;
}

const HERE = dirname(fileURLToPath(import.meta.url));
const READY_TIMEOUT_MS = 20_000;

/**
 * The kv server (`apps/server/dist/main.js`, or `entry`) on `store`: `memory`, `lmdb` (in a temp
 * dir) or etcd endpoints. `inspect`: with Node's inspector on a free loopback port (S8 forces GCs
 * through it). `env`: more settings (e.g. `KV_ID_RETENTION_MS`).
 */
export async function startKv(
  store: "memory" | "lmdb" | { etcd: readonly string[] },
  options: { inspect?: boolean; entry?: string; env?: Record<string, string> } = {},
): Promise<Server> {
  const dir = store === "lmdb" ? mkdtempSync(join(tmpdir(), "kv-bench-lmdb-")) : undefined;
  const spec = store === "memory" ? "memory" : store === "lmdb" ? `lmdb:${dir}` : `etcd:${store.etcd.join(",")}`;
  // The harness sets KV_LOG_LEVEL=info to learn the port; at info kv logs no line per request.
  const env = { KV_STORE: spec, ...(options.inspect === true && { NODE_OPTIONS: "--inspect=127.0.0.1:0" }), ...options.env };
  const server = await startServerProcess({
    env,
    readyTimeoutMs: READY_TIMEOUT_MS,
    ...(options.entry !== undefined && { entry: options.entry }),
  });
  const inspectorUrl = /Debugger listening on (ws:\/\/\S+)/.exec(server.output())?.[1];
  if (options.inspect === true && inspectorUrl === undefined) {
    await server.stop();
    throw new Error(`kv server did not open its inspector:\n${server.output()}`);
  }
  let stopped: Promise<void> | undefined;
  return {
    url: server.url,
    ...(inspectorUrl !== undefined && { inspectorUrl }),
    pids: [server.pid],
    stop() {
      stopped ??= server.stop().then((code) => {
        if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
        if (code !== 0) throw new Error(`kv server (${spec}) exited with ${code}:\n${server.output().slice(-2000)}`);
      });
      return stopped;
    },
  };
}

/** One etcd 3.4 member (testkit's harness: a temp data dir, loopback ports). */
export async function startEtcd(): Promise<Server> {
  const before = new Set(childPids("etcd"));
  const cluster = await startEtcdCluster({ members: 1 });
  const pids = childPids("etcd").filter((pid) => !before.has(pid));
  const url = cluster.endpoints[0];
  if (url === undefined || pids.length !== 1) throw new Error(`expected one new etcd process, found ${pids.length}`);
  return { url, pids, stop: () => cluster.stop() };
}

/** Redis, in memory only (no RDB snapshots, no AOF): the in-memory reference. Resolves once it answers PING. */
export async function startRedis(): Promise<Server> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "kv-bench-redis-"));
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const url = `redis://127.0.0.1:${port}`;
  const { pid, stop } = supervise(child, "redis-server", () => rmSync(dir, { recursive: true, force: true }));
  try {
    await waitFor(() => redisPing(port), `redis-server on port ${port} did not answer PING`);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { url, pids: [pid], stop };
}

/** `bare-fastify.mjs`: Fastify's PUT/GET over a Map, no validation, no hooks, no logger. */
export async function startBareFastify(): Promise<Server> {
  const child = spawn(process.execPath, [join(HERE, "bare-fastify.mjs")], { stdio: ["ignore", "pipe", "pipe"] });
  const { pid, stop, output } = supervise(child, "bare Fastify");
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bare Fastify did not listen:\n${output()}`)), READY_TIMEOUT_MS);
      child.stdout?.on("data", () => {
        const match = /listening at (http:\/\/\S+)/.exec(output());
        if (match?.[1] === undefined) return;
        clearTimeout(timer);
        resolve(match[1]);
      });
      child.once("exit", (code) => reject(new Error(`bare Fastify exited with ${code}:\n${output()}`)));
    });
    return { url, pids: [pid], stop };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/** SIGTERM, a bounded wait, SIGKILL; `stop` rejects when the process did not exit cleanly. */
function supervise(child: ChildProcess, name: string, cleanup?: () => void) {
  let output = "";
  child.stdout?.on("data", (chunk) => (output += chunk));
  child.stderr?.on("data", (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const onExit = () => child.kill("SIGKILL");
  process.once("exit", onExit);
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  let stopped: Promise<void> | undefined;
  return {
    pid: child.pid,
    output: () => output,
    stop(): Promise<void> {
      stopped ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        const code = await exited;
        clearTimeout(timer);
        process.off("exit", onExit);
        cleanup?.();
        if (code !== 0) throw new Error(`${name} exited with ${code}:\n${output.slice(-2000)}`);
      })();
      return stopped;
    },
  };
}

/** A port the kernel had free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Whether Redis on `port` answers `+PONG` within a second. */
function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let reply = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"));
    });
  });
}

async function waitFor(check: () => Promise<boolean>, message: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(message);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Pids of this process's children named `comm` (testkit's etcd harness does not expose its pid). */
function childPids(comm: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (name === comm && ppid === process.pid) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** CPU seconds (user + system) `pid` has used so far. */
export function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/**
 * CPU seconds the whole machine has spent busy so far (user, nice, system, irq, softirq) or
 * stolen by the hypervisor, from /proc/stat.
 */
export function machineBusySeconds(): number {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "").trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS;
}

/** Resident set size of `pid`, in bytes (`VmRSS`). */
export function rssBytesOf(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (match?.[1] === undefined) throw new Error(`no VmRSS for ${pid}`);
  return Number(match[1]) * 1024;
}

const CLOCK_TICKS = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

/** Throws, saying what to install, when a command the suite runs is not on PATH. */
export function assertInstalled(): void {
  for (const [command, pkg] of [
    ["etcd", "etcd-server"],
    ["redis-server", "redis-server"],
  ] as const) {
    try {
      execFileSync(command, ["--version"], { stdio: "pipe" });
    } catch (err) {
      throw new Error(
        `the benchmarks run ${command}, which is not on PATH: apt-get install ${pkg} (node scripts/ensure-test-deps.mjs --bench does)`,
        {
          cause: err,
        },
      );
    }
  }
}
