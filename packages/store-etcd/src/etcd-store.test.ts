import { randomUUID } from "node:crypto";
import { type GetResult, hasCode, NetworkError, type PutResult } from "@kv/rpc";
import { type CompletionRecordOptions, KVServer } from "@kv/server";
import {
  assertLinearizable,
  createFaultProxy,
  describeStoreConformance,
  type EtcdCluster,
  recordHistory,
  startEtcdCluster,
  testSeed,
} from "@kv/testkit";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { openEtcdStore } from "./etcd-store";

let etcd: EtcdCluster;
beforeAll(async () => {
  etcd = await startEtcdCluster({ members: 1 });
});
afterAll(() => etcd?.stop());

/** A store of its own: a fresh prefix in the shared cluster. */
const storeWithPrefix = (prefix = `test-${randomUUID()}/`, records: CompletionRecordOptions = {}) =>
  openEtcdStore({ endpoints: etcd.endpoints, prefix, ...records });

// etcd's leases last whole seconds, two at least: records expire within a few.
describeStoreConformance("EtcdStore", (records) => storeWithPrefix(undefined, records), { shortRetentionMs: 2_000 });

describe("EtcdStore", () => {
  it("keeps deployments with different prefixes apart in one cluster", async () => {
    const [a, b] = await Promise.all([storeWithPrefix("deploy-a/"), storeWithPrefix("deploy-b/")]);
    onTestFinished(() => Promise.all([a.close(), b.close()]).then(() => undefined));
    expect(await a.putIfVersion("shared-name", "from a", 0, undefined)).toEqual({ ok: true, version: 1, revision: expect.any(Number) });
    expect(await b.get("shared-name")).toBeUndefined();
    expect(await b.putIfVersion("shared-name", "from b", 0, undefined)).toEqual({ ok: true, version: 1, revision: expect.any(Number) });
    expect(await a.get("shared-name")).toEqual({
      value: "from a",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
  });

  it("serves one keyspace to several stores, as several kv servers share a cluster", async () => {
    const prefix = `shared-${randomUUID()}/`;
    const [one, two] = [new KVServer(await storeWithPrefix(prefix)), new KVServer(await storeWithPrefix(prefix))];
    expect(await one.put("k", "v1", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await two.put("k", "v2", 0)).toEqual({ err: "ErrVersion" });
    expect(await two.put("k", "v2", 1)).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
    expect(await one.get("k")).toEqual({
      err: "OK",
      value: "v2",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
  });

  it("shares completion records among stores on one prefix: a retry through another finds the first one's record", async () => {
    const prefix = `records-${randomUUID()}/`;
    const [one, two] = [await storeWithPrefix(prefix), await storeWithPrefix(prefix)];
    onTestFinished(() => Promise.all([one.close(), two.close()]).then(() => undefined));
    const mine = await new KVServer(one).put("k", "mine", 0, "put-mine");
    expect(mine).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await new KVServer(two).put("k", "theirs", 1, "put-theirs")).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
    expect(await new KVServer(two).put("k", "mine", 0, "put-mine", { isRetry: true })).toEqual(mine); // the revision it made, too
    // A refusal recorded through one stops a late try through the other.
    expect(await new KVServer(one).put("k", "x", 3, "put-x", { isRetry: true })).toEqual({ err: "ErrVersion" });
    expect(await new KVServer(one).put("k", "v3", 2)).toEqual({ err: "OK", version: 3, revision: expect.any(Number) });
    expect(await new KVServer(two).put("k", "x", 3, "put-x")).toEqual({ err: "ErrVersion" });
    expect(await one.get("k")).toEqual({ value: "v3", version: 3, modRevision: expect.any(Number), createRevision: expect.any(Number) });
    expect(await two.completionRecords()).toBe(3);
  });

  it("refuses a value over etcd's request limit as too large, for good, and writes nothing", async () => {
    const store = await storeWithPrefix();
    onTestFinished(() => store.close());
    for (const bytes of [1.6 * 1024 * 1024, 3 * 1024 * 1024]) {
      await expect(store.putIfVersion("big", "x".repeat(bytes), 0, undefined)).rejects.toMatchObject({ code: "ERR_KV_TOO_LARGE" });
    }
    expect(await store.get("big")).toBeUndefined();
  });

  it("wakes a watcher after a put to its key through another store on the same prefix (an etcd watch)", async () => {
    const prefix = `watch-${randomUUID()}/`;
    const [watching, writing] = [await storeWithPrefix(prefix), await storeWithPrefix(prefix)];
    onTestFinished(() => Promise.all([watching.close(), writing.close()]).then(() => undefined));
    const woken: string[] = [];
    const stopA = watching.watch("a", () => woken.push("a"));
    watching.watch("b", () => woken.push("b"));
    await expect.poll(() => woken.length, { timeout: 5_000 }).toBeGreaterThan(0); // woken once the watch is up
    woken.length = 0;
    await writing.putIfVersion("a", "v", 0, undefined);
    await expect.poll(() => woken.filter((k) => k === "a").length, { timeout: 5_000 }).toBe(1);
    expect(woken).toEqual(["a"]); // not the watcher of "b"
    stopA();
    await writing.putIfVersion("a", "w", 1, undefined);
    await writing.putIfVersion("b", "v", 0, undefined);
    await expect.poll(() => woken.includes("b"), { timeout: 5_000 }).toBe(true);
    expect(woken.filter((k) => k === "a")).toHaveLength(1); // stopped
  });

  it("closes at once while a watch waits for an etcd it cannot reach", async () => {
    const target = { host: "127.0.0.1", port: Number(new URL(etcd.endpoints[0] as string).port) };
    const proxy = await createFaultProxy({ target, connection: { blackhole: 1 } }); // connects, then silence
    onTestFinished(() => proxy.close());
    const store = await openEtcdStore({ endpoints: [proxy.url], prefix: `unreachable-${randomUUID()}/`, callTimeoutMs: 300 });
    store.watch("k", () => {});
    await new Promise((r) => setTimeout(r, 200));
    const outcome = await Promise.race([store.close().then(() => "closed"), new Promise((r) => setTimeout(r, 5_000, "still closing"))]);
    expect(outcome).toBe("closed");
  });

  it("rejects malformed endpoints and an empty prefix with StoreOpenError", async () => {
    await expect(openEtcdStore({ endpoints: [] })).rejects.toMatchObject({ code: "ERR_KV_STORE_OPEN" });
    await expect(openEtcdStore({ endpoints: ["127.0.0.1:2379"] })).rejects.toMatchObject({ code: "ERR_KV_STORE_OPEN" });
    await expect(openEtcdStore({ endpoints: etcd.endpoints, prefix: "" })).rejects.toMatchObject({ code: "ERR_KV_STORE_OPEN" });
  });
});

describe("EtcdStore on a three-member cluster, through faults", () => {
  let three: EtcdCluster;
  beforeAll(async () => {
    three = await startEtcdCluster({ members: 3 });
  });
  afterAll(() => three?.stop());

  it("keeps serving while one member is down, and loses nothing when it comes back", async () => {
    const prefix = `one-down-${randomUUID()}/`;
    const store = await openEtcdStore({ endpoints: three.endpoints, prefix });
    onTestFinished(() => store.close());
    expect(await store.putIfVersion("k", "v1", 0, undefined)).toEqual({ ok: true, version: 1, revision: expect.any(Number) });
    await three.members[0]?.kill();
    expect(await store.isReady()).toBe(true);
    expect(await store.putIfVersion("k", "v2", 1, undefined)).toEqual({ ok: true, version: 2, revision: expect.any(Number) });
    await three.members[0]?.start();
    const onlyTheRestarted = await openEtcdStore({ endpoints: [three.members[0]?.clientUrl as string], prefix });
    onTestFinished(() => onlyTheRestarted.close());
    expect(await onlyTheRestarted.get("k")).toEqual({
      value: "v2",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    }); // a linearizable read there sees the write it missed
  });

  it("is not ready, and refuses calls, while a majority is down; ready again with nothing lost once it is back", async () => {
    const store = await openEtcdStore({ endpoints: three.endpoints, prefix: `no-quorum-${randomUUID()}/`, callTimeoutMs: 300 });
    onTestFinished(() => store.close());
    expect(await store.putIfVersion("k", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: expect.any(Number) });
    await Promise.all([three.members[1]?.kill(), three.members[2]?.kill()]);
    expect(await store.isReady()).toBe(false);
    await expect(store.get("k")).rejects.toMatchObject({ code: "ERR_KV_UNAVAILABLE" });
    const refused = await store.putIfVersion("k", "w", 1, "id").catch((err: unknown) => err);
    expect(refused).toMatchObject({ code: expect.stringMatching(/^ERR_KV_(UNAVAILABLE|OUTCOME_UNKNOWN)$/) });
    await Promise.all([three.members[1]?.start(), three.members[2]?.start()]);
    await expect.poll(() => store.isReady(), { timeout: 15_000 }).toBe(true);
    const after = await store.get("k");
    // Not applied, unless the put's outcome was unknown: then it may have been, once the quorum came back.
    if (hasCode(refused, "ERR_KV_UNAVAILABLE"))
      expect(after).toEqual({ value: "v", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) });
    else expect([1, 2]).toContain(after?.version);
  });

  it("stays linearizable when etcd's connections drop mid-call: an unconfirmed put is 504, never a false ErrVersion", async () => {
    const seed = testSeed();
    // A proxy in front of each member: a retry goes out to another member on a live connection,
    // soon enough to meet the writes that came after a lost reply.
    const proxies = await Promise.all(
      three.endpoints.map((url, i) => {
        const { hostname, port } = new URL(url);
        return createFaultProxy({
          target: { host: hostname, port: Number(port) },
          seed: seed + i,
          request: { drop: 0.03 },
          reply: { drop: 0.1 },
        });
      }),
    );
    onTestFinished(() => Promise.all(proxies.map((p) => p.close())).then(() => undefined));
    const prefix = `faults-${seed}/`;
    const servers = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const store = await openEtcdStore({ endpoints: proxies.map((p) => p.url), prefix, callTimeoutMs: 1_000 });
        onTestFinished(() => store.close());
        return new KVServer(store);
      }),
    );
    let unconfirmed = 0;
    const history = await recordHistory({
      clients: 6,
      opsPerClient: 50,
      keys: ["hot"],
      putRate: 0.7,
      seed,
      now: () => performance.now(),
      execute: async (c, op): Promise<GetResult | PutResult> => {
        const kv = servers[c] as KVServer;
        try {
          return op.kind === "get" ? await kv.get(op.key) : await kv.put(op.key, op.value, op.version, randomUUID());
        } catch (err) {
          // What the app answers 504 or 503: to a client, a try with no reply.
          if (!hasCode(err, "ERR_KV_OUTCOME_UNKNOWN") && !hasCode(err, "ERR_KV_UNAVAILABLE")) throw err;
          unconfirmed++;
          throw new NetworkError((err as Error).message, { cause: err });
        }
      },
    });
    expect(
      proxies.reduce((n, p) => n + p.stats.dropped, 0),
      `seed ${seed}`,
    ).toBeGreaterThan(0);
    assertLinearizable(history, { seed });
    expect(unconfirmed, `seed ${seed}`).toBeLessThan(history.length / 2); // most calls still get through
  });
});
