import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { type Clerk, createClerk, type GetResult, hasCode, NetworkError, type PutResult } from "@kv/clerk";
import { createLock } from "@kv/lock";
import {
  assertLinearizable,
  type EtcdCluster,
  type EtcdMember,
  type Event,
  type Op,
  recordHistory,
  type ServerProcess,
  startEtcdCluster,
  startServerProcess,
  testSeed,
} from "@kv/testkit";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

// Issue 6, "Scale-out test (etcd)": stateless kv servers in front of one etcd cluster serve one
// consistent keyspace, through the loss of a kv server and of an etcd member.

const CLIENTS = 10;
const OPS_PER_CLIENT = 60;
const KEYS = ["a", "b", "c"];
const CONTENDERS = 10;
const SECTIONS_PER_CONTENDER = 3;
// Shorter than the server's etcd deadline (1.5 s × 3 tries): a try stuck in an election is
// given up and the next goes to another server, as a real client would.
const ATTEMPT_TIMEOUT_MS = 1_000;
const BACKOFF = { baseMs: 10, maxMs: 200 };
// One op, retries included: long enough to ride out an election, short enough to end the run.
const OP_DEADLINE_MS = 15_000;
// How long the chaos task waits for the workload to reach a point before it gives up.
const PROGRESS_TIMEOUT_MS = 20_000;
const MEMBER_DOWN_MS = 1_000;
const TEST_TIMEOUT_MS = 45_000;
// Every client meets the servers in a different order, so each server is someone's first.
const ENDPOINT_ORDERS = [
  [0, 1, 2],
  [1, 2, 0],
  [2, 0, 1],
  [0, 2, 1],
  [2, 1, 0],
  [1, 0, 2],
] as const;

let etcd: EtcdCluster;
beforeAll(async () => {
  etcd = await startEtcdCluster({ members: 3 });
});
afterAll(() => etcd?.stop());

/** Three kv servers on the cluster under a prefix of their own; all stopped when the test ends. */
async function startServers(): Promise<ServerProcess[]> {
  const env = { KV_STORE: `etcd:${etcd.endpoints.join(",")}`, KV_ETCD_PREFIX: `scale-out-${randomUUID()}/` };
  const started = await Promise.allSettled([0, 1, 2].map(() => startServerProcess({ env })));
  const servers = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  onTestFinished(() => Promise.all(servers.map((s) => s.stop())).then(() => undefined));
  const failed = started.find((r) => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
  return servers;
}

/** One clerk per client, each given all three servers in its own order; closed when the test ends. */
function clerksFor(servers: readonly ServerProcess[], count: number): Clerk[] {
  const clerks = Array.from({ length: count }, (_, c) =>
    createClerk({
      endpoints: (ENDPOINT_ORDERS[c % ENDPOINT_ORDERS.length] as readonly number[]).map((i) => (servers[i] as ServerProcess).url),
      attemptTimeoutMs: ATTEMPT_TIMEOUT_MS,
      backoff: BACKOFF,
    }),
  );
  onTestFinished(() => Promise.all(clerks.map((c) => c.close())).then(() => undefined));
  return clerks;
}

/** A moment in the run: when it happened (performance.now), and a promise the workload can wait on. */
class Milestone {
  at: number | undefined;
  readonly reached: Promise<void>;
  readonly #resolve: () => void;
  constructor() {
    let resolve = () => {};
    this.reached = new Promise<void>((r) => (resolve = r));
    this.#resolve = resolve;
  }
  mark(): void {
    this.at ??= performance.now();
    this.#resolve();
  }
}

/** Waits until `count()` reaches `n`; throws, naming `what`, after PROGRESS_TIMEOUT_MS. */
async function until(what: string, count: () => number, n: number): Promise<void> {
  const deadline = performance.now() + PROGRESS_TIMEOUT_MS;
  while (count() < n) {
    if (performance.now() > deadline) throw new Error(`${what}: ${count()} of ${n} within ${PROGRESS_TIMEOUT_MS} ms`);
    await sleep(10);
  }
}

/** The member the cluster names its leader now: killing it forces an election mid-run. */
async function leaderOf(cluster: EtcdCluster): Promise<EtcdMember> {
  // A loaded machine can set off an election of its own: ask again for a while.
  for (let attempt = 0; attempt < 40; attempt++) {
    // etcd 3.4's JSON gateway; member ids are uint64s, sent as strings.
    const statuses = await Promise.all(
      cluster.members.map(async (m) => {
        const res = await fetch(`${m.clientUrl}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(2_000) });
        return (await res.json()) as { header?: { member_id?: string }; leader?: string };
      }),
    );
    const i = statuses.findIndex((s) => s.header?.member_id !== undefined && s.header.member_id === s.leader);
    if (i !== -1) return cluster.members[i] as EtcdMember;
    await sleep(50);
  }
  throw new Error("no etcd member said it leads within 2 s");
}

/** One op through a clerk, bounded; a call that ran out of time is an op with no reply. */
async function perform(clerk: Clerk, op: Op): Promise<GetResult | PutResult> {
  const signal = AbortSignal.timeout(OP_DEADLINE_MS);
  try {
    return op.kind === "get" ? await clerk.get(op.key, { signal }) : await clerk.put(op.key, op.value, op.version, { signal });
  } catch (err) {
    if (!hasCode(err, "ABORT_ERR")) throw err;
    throw new NetworkError(`no reply within ${OP_DEADLINE_MS} ms`, { cause: err });
  }
}

/**
 * Reads every key with an acknowledged put: it must be at the largest acknowledged version or
 * later, and at an acknowledged version it must hold that put's value. Returns what is wrong.
 */
async function lostWrites(clerk: Clerk, history: readonly Event[]): Promise<string[]> {
  const acknowledged = new Map<string, Map<number, string>>();
  for (const e of history) {
    if (e.op.kind !== "put" || e.output?.err !== "OK") continue;
    const byVersion = acknowledged.get(e.op.key) ?? new Map<number, string>();
    byVersion.set(e.output.version, e.op.value);
    acknowledged.set(e.op.key, byVersion);
  }
  const problems = acknowledged.size === 0 ? ["no put was acknowledged: nothing to read back"] : [];
  for (const [key, byVersion] of acknowledged) {
    const latest = Math.max(...byVersion.keys());
    const read = await clerk.get(key, { signal: AbortSignal.timeout(OP_DEADLINE_MS) });
    if (read.err !== "OK") {
      problems.push(`${key}: ${read.err} after puts acknowledged up to version ${latest}`);
    } else if (read.version < latest) {
      problems.push(`${key}: version ${read.version} after a put acknowledged at version ${latest}`);
    } else if (byVersion.has(read.version) && byVersion.get(read.version) !== read.value) {
      problems.push(`${key}@${read.version}: ${JSON.stringify(read.value)}, acknowledged ${JSON.stringify(byVersion.get(read.version))}`);
    }
  }
  return problems;
}

describe("three kv servers on a three-member etcd cluster", () => {
  it(
    "stay linearizable and lose no acknowledged put while a kv server is killed and the etcd leader is killed and restarted",
    async () => {
      const seed = testSeed();
      const servers = await startServers();
      const clerks = clerksFor(servers, CLIENTS);
      const victim = servers[seed % servers.length] as ServerProcess;
      const serverKilled = new Milestone();
      const memberKilled = new Milestone();
      const memberBack = new Milestone();
      // Each client waits at these op indexes for the fault before them, so that every fault
      // meets ops in flight and is followed by ops called after it, however fast the run is.
      const gates = new Map([
        [OPS_PER_CLIENT / 4, serverKilled],
        [OPS_PER_CLIENT / 2, memberKilled],
        [(3 * OPS_PER_CLIENT) / 4, memberBack],
      ]);
      const opsBegun = new Array<number>(CLIENTS).fill(0);
      let answered = 0;
      let killedMember: EtcdMember | undefined;

      const chaos = async () => {
        try {
          await until("answered ops before the kv server kill", () => answered, (CLIENTS * OPS_PER_CLIENT) / 10);
          await victim.kill();
          serverKilled.mark();
          await until("answered ops before the etcd member kill", () => answered, (CLIENTS * OPS_PER_CLIENT * 35) / 100);
          killedMember = await leaderOf(etcd);
          await killedMember.kill();
          memberKilled.mark();
          await sleep(MEMBER_DOWN_MS);
          await killedMember.start();
          memberBack.mark();
        } finally {
          // A failed step must not leave clients waiting at a gate; its rejection fails the test.
          for (const m of [serverKilled, memberKilled, memberBack]) if (m.at === undefined) m.mark();
        }
      };
      const workload = recordHistory({
        clients: CLIENTS,
        opsPerClient: OPS_PER_CLIENT,
        keys: KEYS,
        seed,
        now: () => performance.now(),
        execute: async (c, op) => {
          const begun = (opsBegun[c] as number) + 1;
          opsBegun[c] = begun;
          try {
            const output = await perform(clerks[c] as Clerk, op);
            answered++;
            return output;
          } finally {
            // Waiting here widens this op's interval (harmless to the check) and starts the next
            // op after the fault.
            await gates.get(begun)?.reached;
          }
        },
      });
      const [history] = await Promise.all([workload, chaos()]);

      const answeredAfter = (t: number) => history.filter((e) => e.call > t && e.output !== undefined).length;
      expect(await victim.exited, `seed ${seed}: the killed kv server exited by a signal`).toBeNull();
      expect(killedMember?.isRunning, `seed ${seed}: the etcd member runs again`).toBe(true);
      expect(answeredAfter(serverKilled.at as number), `seed ${seed}: ops answered after the kv server kill`).toBeGreaterThan(0);
      expect(answeredAfter(memberKilled.at as number), `seed ${seed}: ops answered after the etcd member kill`).toBeGreaterThan(0);
      expect(answeredAfter(memberBack.at as number), `seed ${seed}: ops answered after the etcd member restart`).toBeGreaterThan(0);
      assertLinearizable(history, { seed });

      const reader = createClerk({ endpoints: servers.map((s) => s.url), attemptTimeoutMs: ATTEMPT_TIMEOUT_MS, backoff: BACKOFF });
      onTestFinished(() => reader.close());
      expect(await lostWrites(reader, history), `seed ${seed}`).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "keep 10 lock contenders mutually exclusive across servers while a kv server is killed and the etcd leader is killed and restarted, with strictly increasing tokens",
    async () => {
      const seed = testSeed();
      const servers = await startServers();
      const clerks = clerksFor(servers, CONTENDERS);
      const victim = servers[seed % servers.length] as ServerProcess;
      const serverKilled = new Milestone();
      const etcdRestarted = new Milestone();
      let killedMember: EtcdMember | undefined;
      const lockKey = "lock";
      const counterKey = "counter";
      let inside = -1;
      let sectionsDone = 0;
      let sectionsAfterKill = 0;
      const problems: string[] = [];
      const tokens: number[] = [];

      const chaos = async () => {
        try {
          await until("critical sections before the kv server kill", () => sectionsDone, CONTENDERS);
          await victim.kill();
          serverKilled.mark();
          killedMember = await leaderOf(etcd);
          await killedMember.kill();
          await sleep(MEMBER_DOWN_MS);
          await killedMember.start();
        } finally {
          serverKilled.mark();
          etcdRestarted.mark();
        }
      };
      const contender = async (clerk: Clerk, c: number) => {
        const lock = createLock(clerk, lockKey);
        for (let i = 0; i < SECTIONS_PER_CONTENDER; i++) {
          // Every contender's middle section comes after the kv server's kill, its last after the
          // etcd leader's restart: failover and an election under the lock are both tested.
          if (i === 1) await serverKilled.reached;
          if (i === SECTIONS_PER_CONTENDER - 1) await etcdRestarted.reached;
          const hold = await lock.acquire({ signal: AbortSignal.timeout(OP_DEADLINE_MS * 2) });
          if (inside !== -1) problems.push(`contender ${c} entered while ${inside} was inside`);
          inside = c;
          tokens.push(hold.token);
          const signal = AbortSignal.timeout(OP_DEADLINE_MS);
          const seen = await clerk.get(counterKey, { signal });
          const next = seen.err === "OK" ? Number(seen.value) + 1 : 1;
          const wrote = await clerk.put(counterKey, String(next), seen.err === "OK" ? seen.version : 0, { signal });
          if (wrote.err !== "OK") problems.push(`contender ${c}'s counter put got ${wrote.err}`);
          if (inside !== c) problems.push(`contender ${c} shared its section with ${inside}`);
          inside = -1;
          await lock.release();
          sectionsDone++;
          if (serverKilled.at !== undefined) sectionsAfterKill++;
        }
      };
      await Promise.all([chaos(), ...clerks.map(contender)]);

      expect(await victim.exited, `seed ${seed}: the killed kv server exited by a signal`).toBeNull();
      expect(sectionsAfterKill, `seed ${seed}: sections after the kill`).toBeGreaterThan(0);
      expect(killedMember?.isRunning, `seed ${seed}: the killed etcd member runs again`).toBe(true);
      expect(problems, `seed ${seed}`).toEqual([]);
      const total = CONTENDERS * SECTIONS_PER_CONTENDER;
      expect(await (clerks[0] as Clerk).get(counterKey, { signal: AbortSignal.timeout(OP_DEADLINE_MS) }), `seed ${seed}`).toMatchObject({
        err: "OK",
        value: String(total),
      });
      expect(tokens, `seed ${seed}`).toHaveLength(total);
      expect(
        tokens.every((t, i) => i === 0 || t > (tokens[i - 1] as number)),
        `seed ${seed}: tokens ${tokens.join()}`,
      ).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "answer /readyz 503 while etcd has no quorum, refusing puts as not applied or unconfirmed, and 200 once it is back",
    async () => {
      const [server] = await startServers();
      const readyz = async () => (await fetch(`${(server as ServerProcess).url}/readyz`, { signal: AbortSignal.timeout(5_000) })).status;
      expect(await readyz()).toBe(200);
      const [, second, third] = etcd.members as [EtcdMember, EtcdMember, EtcdMember];
      await Promise.all([second.kill(), third.kill()]);
      try {
        await expect.poll(readyz, { timeout: 10_000 }).toBe(503);
        const put = await fetch(`${(server as ServerProcess).url}/v1/kv/no-quorum`, {
          method: "PUT",
          headers: { "content-type": "application/json" },
          body: '{"value":"v","version":0}',
          signal: AbortSignal.timeout(15_000),
        });
        expect([503, 504]).toContain(put.status);
      } finally {
        await Promise.all([second.start(), third.start()]);
      }
      await expect.poll(readyz, { timeout: 15_000 }).toBe(200);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "wake a long-poll read on one kv server by a put through another (an etcd watch)",
    async () => {
      const [a, b] = (await startServers()) as [ServerProcess, ServerProcess];
      // A 60 s wait: unless the put wakes it, the test runs out of time first.
      const read = (server: ServerProcess, path: string) => fetch(`${server.url}${path}`).then((r) => r.json());
      const put = (server: ServerProcess, version: number, value: string) =>
        fetch(`${server.url}/v1/kv/watched`, {
          method: "PUT",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ value, version }),
        }).then((r) => r.json());
      expect(await put(a, 0, "v1")).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
      const waiting = read(a, "/v1/kv/watched?waitVersion=1&waitMs=60000");
      // Waiting on a before the put through b: only an etcd watch can answer it now.
      await expect.poll(() => fetch(`${a.url}/metrics`).then((r) => r.text()), { timeout: 10_000 }).toMatch(/^kv_waiters 1$/m);
      expect(await put(b, 1, "v2")).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
      expect(await waiting).toEqual({
        err: "OK",
        value: "v2",
        version: 2,
        modRevision: expect.any(Number),
        createRevision: expect.any(Number),
      });
    },
    TEST_TIMEOUT_MS,
  );
});
