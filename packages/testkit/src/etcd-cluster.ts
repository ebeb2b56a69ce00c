import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One etcd member of a {@link EtcdCluster}, on loopback ports. */
export interface EtcdMember {
  readonly name: string;
  /** `http://127.0.0.1:<port>`: where clients reach this member. */
  readonly clientUrl: string;
  /** Whether its process runs now. */
  readonly isRunning: boolean;
  /** SIGKILL: a crash. Its data directory stays, so `start` brings it back as it was. */
  kill(): Promise<void>;
  /** Starts it again (after `kill`) with its data, and resolves once it answers `/health`. */
  start(): Promise<void>;
}

/** Real etcd processes from Debian's `etcd-server`, in a temporary directory, for tests. */
export interface EtcdCluster {
  /** Every member's client URL. */
  readonly endpoints: string[];
  readonly members: EtcdMember[];
  /** Kills every member and removes the data; idempotent. */
  stop(): Promise<void>;
}

/** How {@link startEtcdCluster} runs etcd. */
export interface EtcdClusterOptions {
  /** How many members (default 1). */
  members?: number;
  /** How long to wait for the cluster to be healthy (default 20 s). */
  readyTimeoutMs?: number;
}

const ETCD = "etcd";
const HOW_TO_INSTALL = "install Debian's etcd-server package (apt-get install etcd-server); .ci/run does";
// Ten times faster than etcd's defaults: a killed leader is replaced in about half a second.
const HEARTBEAT_MS = 50;
const ELECTION_TIMEOUT_MS = 500;
const HEALTH_POLL_MS = 50;

// Members still running when the test process exits die with it, whatever the tests did.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts an etcd cluster of `members` members on free loopback ports, each with a data
 * directory of its own under one temporary directory, and resolves once every member answers
 * `/health`. Throws, saying how to install it, when there is no `etcd` on PATH.
 */
export async function startEtcdCluster(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
  assertEtcdInstalled();
  const count = options.members ?? 1;
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  const root = mkdtempSync(join(tmpdir(), "kv-etcd-"));
  const ports = await freePorts(count * 2);
  const specs = Array.from({ length: count }, (_, i) => ({
    name: `m${i}`,
    clientUrl: `http://127.0.0.1:${ports[2 * i]}`,
    peerUrl: `http://127.0.0.1:${ports[2 * i + 1]}`,
    dataDir: join(root, `m${i}`),
  }));
  const initialCluster = specs.map((s) => `${s.name}=${s.peerUrl}`).join(",");
  const token = `kv-test-${process.pid}-${Date.now()}`;

  const members = specs.map((spec) => {
    let child: ChildProcess | undefined;
    let output = "";
    let hasStarted = false;
    const launch = () => {
      child = spawn(
        ETCD,
        [
          `--name=${spec.name}`,
          `--data-dir=${spec.dataDir}`,
          `--listen-client-urls=${spec.clientUrl}`,
          `--advertise-client-urls=${spec.clientUrl}`,
          `--listen-peer-urls=${spec.peerUrl}`,
          `--initial-advertise-peer-urls=${spec.peerUrl}`,
          `--initial-cluster=${initialCluster}`,
          `--initial-cluster-token=${token}`,
          `--initial-cluster-state=${hasStarted ? "existing" : "new"}`,
          `--heartbeat-interval=${HEARTBEAT_MS}`,
          `--election-timeout=${ELECTION_TIMEOUT_MS}`,
          "--logger=zap",
          "--log-level=error",
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      hasStarted = true;
      running.add(child);
      const self = child;
      self.once("exit", () => running.delete(self));
      self.stdout?.on("data", (chunk) => (output += chunk));
      self.stderr?.on("data", (chunk) => (output += chunk));
    };
    const member = {
      name: spec.name,
      clientUrl: spec.clientUrl,
      get isRunning() {
        return child !== undefined && child.exitCode === null && child.signalCode === null;
      },
      async kill() {
        const c = child;
        if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
        const gone = new Promise((resolve) => c.once("exit", resolve));
        c.kill("SIGKILL");
        await gone;
      },
      async start() {
        if (member.isRunning) return;
        launch();
        await waitHealthy(spec.clientUrl, Date.now() + readyTimeoutMs, () => `${spec.name}: ${output.slice(-2000)}`);
      },
      launch,
      output: () => output,
    };
    return member;
  });

  let stopped: Promise<void> | undefined;
  const cluster: EtcdCluster = {
    endpoints: specs.map((s) => s.clientUrl),
    members,
    stop() {
      stopped ??= Promise.all(members.map((m) => m.kill())).then(() => rmSync(root, { recursive: true, force: true }));
      return stopped;
    },
  };
  try {
    for (const m of members) m.launch(); // together: a member of a new cluster waits for its peers
    const deadline = Date.now() + readyTimeoutMs;
    for (const m of members) await waitHealthy(m.clientUrl, deadline, () => `${m.name}: ${m.output().slice(-2000)}`);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function assertEtcdInstalled(): void {
  try {
    execFileSync(ETCD, ["--version"], { stdio: "pipe" });
  } catch (err) {
    throw new Error(`these tests need a real etcd, and there is no \`${ETCD}\` on PATH: ${HOW_TO_INSTALL}`, { cause: err });
  }
}

/** Waits until etcd's `/health` says true (it needs a leader and a quorum for that). */
async function waitHealthy(clientUrl: string, deadline: number, describe: () => string): Promise<void> {
  while (true) {
    try {
      const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
      const body = (await res.json()) as { health?: string };
      if (body.health === "true") return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`etcd at ${clientUrl} was not healthy in time\n${describe()}`);
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_MS));
  }
}

/** `n` distinct ports the kernel had free a moment ago. */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => {
      const server = createServer();
      return new Promise<ReturnType<typeof createServer>>((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
    }),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}
