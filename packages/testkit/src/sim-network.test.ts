import { hasCode, type PutResult } from "@kv/rpc";
import { KVServer, MemoryStore, type DeleteIfVersionResult, type PutIfVersionResult, type Store, type StoredEntry } from "@kv/server";
import { describe, expect, it } from "vitest";
import { checkLinearizable } from "./check-linearizable";
import { testSeed } from "./random";
import type { Event } from "./history";
import { assertLinearizable, type RecordHistoryOptions, recordHistory } from "./record-history";
import { SimNetwork, type SimNetworkOptions, type SimServer } from "./sim-network";

const lossy: Omit<SimNetworkOptions, "seed"> = { requestLoss: 0.2, replyLoss: 0.2, longDelayRate: 0.05, longDelayMs: 300 };

/** `recordHistory`, whose failure names the seed to replay, as a checker's verdict does. */
async function record(options: RecordHistoryOptions): Promise<Event[]> {
  try {
    return await recordHistory(options);
  } catch (err) {
    throw new Error(`recording failed (replay with KV_TEST_SEED=${options.seed}): ${String(err)}`, { cause: err });
  }
}

async function runWorkers(server: SimServer, seed: number, options = lossy) {
  const net = new SimNetwork(server, { seed, ...options });
  const transports = Array.from({ length: 10 }, (_, c) => net.transport(c));
  const history = await record({
    clients: 10,
    opsPerClient: 60,
    keys: ["a", "b", "c"],
    seed,
    now: () => net.now(),
    execute: (c, op) => {
      const t = transports[c];
      if (t === undefined) throw new Error(`no client ${c}`);
      return op.kind === "get" ? t.get(op.key) : t.put({ key: op.key, value: op.value, version: op.version });
    },
  });
  return { net, history, stats: { ...net.stats } }; // late messages may still be in flight: snapshot now
}

/** A store that ignores the expected version: every put wins. */
class VersionBlindStore implements Store {
  readonly #entries = new Map<string, StoredEntry>();
  async get(key: string) {
    return this.#entries.get(key);
  }
  async putIfVersion(key: string, value: string): Promise<PutIfVersionResult> {
    const version = (this.#entries.get(key)?.version ?? 0) + 1;
    this.#entries.set(key, { value, version, modRevision: version, createRevision: 1 });
    return { ok: true, version, revision: version };
  }
  async deleteIfVersion(): Promise<DeleteIfVersionResult> {
    throw new Error("not used here");
  }
  async close() {}
}

describe("SimNetwork", () => {
  it("keeps KVServer linearizable for 10 single-try clients at 20 % request and 20 % reply loss", async () => {
    const seed = testSeed();
    const { net, history } = await runWorkers(new KVServer(new MemoryStore()), seed);
    expect(net.stats.lostRequests, `seed ${seed}`).toBeGreaterThan(0);
    expect(net.stats.lostReplies, `seed ${seed}`).toBeGreaterThan(0);
    const unanswered = history.filter((e) => e.return === undefined).length;
    expect(unanswered, `seed ${seed}`).toBeGreaterThan(history.length / 5);
    assertLinearizable(history, { seed });
  });

  it("lets the checker catch a store that ignores versions", async () => {
    const seed = testSeed();
    const { history } = await runWorkers(new KVServer(new VersionBlindStore()), seed);
    expect(checkLinearizable(history), `seed ${seed}`).toMatchObject({ result: "illegal" });
  });

  it("replays the same run from the same seed", async () => {
    const seed = testSeed();
    const first = await runWorkers(new KVServer(new MemoryStore()), seed);
    const second = await runWorkers(new KVServer(new MemoryStore()), seed);
    expect(second.history, `seed ${seed}`).toEqual(first.history);
    expect(second.stats).toEqual(first.stats);
    const other = await runWorkers(new KVServer(new MemoryStore()), seed + 1);
    expect(other.history).not.toEqual(first.history);
  });

  it("fails a recording that throws with the seed to replay it", async () => {
    const seed = testSeed();
    const server = new KVServer(new MemoryStore());
    const buggy: SimServer = {
      get: (key) => server.get(key),
      put: async () => {
        throw new TypeError("a bug in the server");
      },
    };
    await expect(runWorkers(buggy, seed)).rejects.toThrow(
      `recording failed (replay with KV_TEST_SEED=${seed}): TypeError: a bug in the server`,
    );
  });

  it("delivers late requests after their sender gave up, out of order", async () => {
    const applied: string[] = [];
    const server = new KVServer(new MemoryStore());
    const logging = {
      get: (key: string) => server.get(key),
      put: (key: string, value: string, version: number) => {
        applied.push(key);
        return server.put(key, value, version);
      },
    };
    const net = new SimNetwork(logging, { seed: 1, longDelayRate: 0.5, longDelayMs: 1000 });
    const t = net.transport(0);
    const keys = Array.from({ length: 20 }, (_, i) => `k${String(i).padStart(2, "0")}`);
    const results = await Promise.allSettled(keys.map((key) => t.put({ key, value: "v", version: 0 })));
    const timedOut = results.filter((r) => r.status === "rejected" && hasCode(r.reason, "ERR_KV_NO_REPLY")).length;
    expect(timedOut).toBeGreaterThan(0);
    await net.sleep(2000); // let the late requests land
    expect(applied).toHaveLength(20); // every one landed, though some senders saw no reply
    expect(applied).not.toEqual(keys); // sent in order, applied in another
  });

  it("loses a reply after the server acted: the put is there though its sender saw no reply", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 5, replyLoss: 1 });
    await expect(net.transport(0).put({ key: "k", value: "v", version: 0 })).rejects.toMatchObject({ code: "ERR_KV_NO_REPLY" });
    net.setFaults({ replyLoss: 0 });
    expect(await net.transport(1).get("k")).toEqual({ err: "OK", value: "v", version: 1, modRevision: 1, createRevision: 1 });
    expect(net.stats.lostReplies).toBe(1);
  });

  it("keeps KVServer linearizable while clients are partitioned away and healed during the run", async () => {
    const seed = testSeed();
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed, requestLoss: 0.05, replyLoss: 0.05 });
    const transports = Array.from({ length: 10 }, (_, c) => net.transport(c));
    let isRunning = true;
    const partitioner = (async () => {
      for (let round = 0; isRunning && round < 1000; round++) {
        net.partition([round % 10, (round + 3) % 10]);
        await net.sleep(20);
        net.heal();
        await net.sleep(10);
      }
    })();
    const history = await record({
      clients: 10,
      opsPerClient: 60,
      keys: ["a", "b"],
      seed,
      now: () => net.now(),
      execute: (c, op) => {
        const t = transports[c] as (typeof transports)[number];
        return op.kind === "get" ? t.get(op.key) : t.put({ key: op.key, value: op.value, version: op.version });
      },
    });
    isRunning = false;
    await partitioner;
    expect(net.stats.partitioned, `seed ${seed}`).toBeGreaterThan(20);
    assertLinearizable(history, { seed });
  });

  it("cuts a partitioned client off both ways until healed, and lets the others through", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 2 });
    const [cut, other] = [net.transport(0), net.transport(1)];
    net.partition([0]);
    await expect(cut.put({ key: "k", value: "v", version: 0 })).rejects.toMatchObject({ code: "ERR_KV_NO_REPLY" });
    expect(await other.get("k")).toEqual({ err: "ErrNoKey" }); // the cut-off put never arrived
    expect(await other.put({ key: "k", value: "w", version: 0 })).toEqual({ err: "OK", version: 1, revision: 1 });
    net.heal();
    expect(await cut.get("k")).toEqual({ err: "OK", value: "w", version: 1, modRevision: 1, createRevision: 1 });
    expect(net.stats.partitioned).toBeGreaterThan(0);
  });

  it("heals only the clients named, and every client when none are", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 6 });
    const [a, b, c] = [net.transport(0), net.transport(1), net.transport(2)];
    net.partition([0, 1, 2]);
    net.heal([1]);
    expect(await b.get("k")).toEqual({ err: "ErrNoKey" });
    await expect(a.get("k")).rejects.toMatchObject({ code: "ERR_KV_NO_REPLY" });
    await expect(c.get("k")).rejects.toMatchObject({ code: "ERR_KV_NO_REPLY" });
    net.heal();
    expect(await a.get("k")).toEqual({ err: "ErrNoKey" });
    expect(await c.get("k")).toEqual({ err: "ErrNoKey" });
  });

  it("advances virtual time only: a long simulated run takes little real time", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 3 });
    await net.sleep(60_000);
    expect(net.now()).toBe(60_000);
  });

  it("passes a server's rejection to the client as a reply", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 4 });
    const err = await net
      .transport(0)
      .put({ key: "", value: "v", version: 0 })
      .catch((e: unknown) => e);
    expect(hasCode(err, "ERR_INVALID_ARG_VALUE")).toBe(true);
    const ok: PutResult = await net.transport(0).put({ key: "k", value: "v", version: 0, id: "p1" });
    expect(ok).toEqual({ err: "OK", version: 1, revision: 1 });
  });

  it("holds a long-poll read until a put through the network changes the key", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 5, replyTimeoutMs: 10_000 });
    const waiting = net.transport(0).get("k", { timeoutMs: 10_000, wait: { version: 0, ms: 5_000 } });
    await net.sleep(1_000);
    expect(await net.transport(1).put({ key: "k", value: "v", version: 0 })).toEqual({ err: "OK", version: 1, revision: 1 });
    const putDone = net.now();
    expect(await waiting).toEqual({ err: "OK", value: "v", version: 1, modRevision: 1, createRevision: 1 });
    expect(net.now() - putDone).toBeLessThan(20);
  });

  it("answers a long-poll at once when the version already differs, and with the state then at its deadline", async () => {
    const server = new KVServer(new MemoryStore());
    await server.put("k", "v", 0);
    const net = new SimNetwork(server, { seed: 6, replyTimeoutMs: 10_000 });
    const t = net.transport(0);
    expect(await t.get("k", { wait: { version: 0, ms: 5_000 } })).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: 1,
      createRevision: 1,
    });
    expect(net.now()).toBeLessThan(20);
    const start = net.now();
    expect(await t.get("k", { wait: { version: 1, ms: 2_000 } })).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: 1,
      createRevision: 1,
    });
    expect(net.now() - start).toBeGreaterThanOrEqual(2_000);
    expect(await t.get("absent", { wait: { version: 0, ms: 300 } })).toEqual({ err: "ErrNoKey" });
  });
});
