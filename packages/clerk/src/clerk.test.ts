import { type GetResult, NetworkError, type PutRequest, type PutResult, type Transport, UnavailableError } from "@kv/rpc";
import { KVServer, MemoryStore } from "@kv/server";
import { assertLinearizable, type Op, recordHistory, SimNetwork, type SimNetworkOptions, type SimServer, testSeed } from "@kv/testkit";
import { describe, expect, it } from "vitest";
import { Clerk } from "./clerk";

const unreliable: Omit<SimNetworkOptions, "seed"> = { requestLoss: 0.2, replyLoss: 0.2, longDelayRate: 0.05, longDelayMs: 300 };

/** A simulated network with one clerk per client, all in virtual time. */
function simulate(seed: number, faults: Omit<SimNetworkOptions, "seed"> = {}, clients = 1) {
  const net = new SimNetwork(new KVServer(new MemoryStore()), { seed, ...faults });
  const clerks = Array.from({ length: clients }, (_, c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 }));
  const execute = (c: number, op: Op): Promise<GetResult | PutResult> => {
    const clerk = clerks[c] as Clerk;
    return op.kind === "get" ? clerk.get(op.key) : clerk.put(op.key, op.value, op.version);
  };
  return { net, clerks, execute };
}

async function run(seed: number, faults: Omit<SimNetworkOptions, "seed">, clients: number, keys: string[], opsPerClient = 50) {
  const sim = simulate(seed, faults, clients);
  const history = await recordHistory({ clients, opsPerClient, keys, seed, now: () => sim.net.now(), execute: sim.execute });
  return { ...sim, history };
}

describe("Clerk over the simulated network (linearizability)", () => {
  it("one client, reliable network", async () => {
    const seed = testSeed();
    const { history } = await run(seed, {}, 1, ["a"], 200);
    expect(history.every((e) => e.output !== undefined)).toBe(true);
    assertLinearizable(history, { seed });
  });

  it("10 clients on one key, reliable network", async () => {
    const seed = testSeed();
    const { history } = await run(seed, {}, 10, ["a"]);
    assertLinearizable(history, { seed });
  });

  it("10 clients on one key, unreliable network: every call still gets an answer", async () => {
    const seed = testSeed();
    const { history, net } = await run(seed, unreliable, 10, ["a"]);
    expect(net.stats.lostRequests + net.stats.lostReplies, `seed ${seed}`).toBeGreaterThan(50);
    expect(
      history.every((e) => e.output !== undefined),
      `seed ${seed}`,
    ).toBe(true); // the clerk retried through
    assertLinearizable(history, { seed });
  });

  it("20 clients on many keys, unreliable network", async () => {
    const seed = testSeed();
    const { history } = await run(seed, unreliable, 20, ["a", "b", "c", "d", "e", "f"]);
    assertLinearizable(history, { seed });
  });

  it("a client partitioned away waits it out, and answers after the heal", async () => {
    const seed = testSeed();
    const sim = simulate(seed, {}, 5);
    const healer = (async () => {
      await sim.net.sleep(5);
      sim.net.partition([0, 1]);
      await sim.net.sleep(3_000);
      sim.net.heal();
    })();
    const history = await recordHistory({
      clients: 5,
      opsPerClient: 40,
      keys: ["a", "b"],
      seed,
      now: () => sim.net.now(),
      execute: sim.execute,
    });
    await healer;
    expect(sim.net.stats.partitioned, `seed ${seed}`).toBeGreaterThan(0);
    const lastOfCutOff = Math.max(...history.filter((e) => e.client < 2).map((e) => e.return ?? 0));
    expect(lastOfCutOff, `seed ${seed}`).toBeGreaterThan(3_000); // they finished only after the heal
    expect(history.every((e) => e.output !== undefined)).toBe(true);
    assertLinearizable(history, { seed });
  });
});

describe("Clerk.put outcomes (contract §3)", () => {
  it("returns the first try's answer as it is: ErrVersion stays ErrVersion", async () => {
    const { clerks } = simulate(1, {}, 1);
    const clerk = clerks[0] as Clerk;
    await clerk.put("k", "a", 0);
    expect(await clerk.put("k", "b", 0)).toEqual({ err: "ErrVersion" });
    expect(await clerk.put("k", "b", 5)).toEqual({ err: "ErrVersion" });
    expect(await clerk.put("absent", "b", 5)).toEqual({ err: "ErrNoKey" });
  });

  it("answers OK, not ErrMaybe, when a reply was lost and nothing came in between (put ids)", async () => {
    const { net, clerks } = simulate(2, { replyLoss: 1 }, 1);
    const put = (clerks[0] as Clerk).put("k", "a", 0);
    await net.sleep(50); // the first try has landed, its reply is lost
    net.setFaults({ replyLoss: 0 });
    expect(await put).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(net.stats.lostReplies).toBeGreaterThan(0);
  });

  it("answers OK from the put's completion record when its reply was lost and another write came in between", async () => {
    const { net, clerks } = simulate(3, { replyLoss: 1 }, 2);
    const [mine, other] = clerks as [Clerk, Clerk];
    const put = mine.put("k", "mine", 0); // lands at version 1; its reply is lost
    await net.sleep(20);
    const theirs = other.put("k", "theirs", 1); // lands at version 2 before our retry
    await net.sleep(20);
    net.setFaults({ replyLoss: 0 });
    expect(await put).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await theirs).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
    expect(await mine.get("k")).toEqual({
      err: "OK",
      value: "theirs",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
  });

  it("deletes: answers OK from the delete's completion record when its reply was lost and the key was created again meanwhile", async () => {
    const { net, clerks } = simulate(5, {}, 2);
    const [mine, other] = clerks as [Clerk, Clerk];
    await mine.put("k", "v", 0);
    net.setFaults({ replyLoss: 1 });
    const deleted = mine.delete("k", { version: 1 }); // applied; its reply is lost
    await net.sleep(20);
    const again = other.put("k", "again", 0); // the key exists again before our retry
    await net.sleep(20);
    net.setFaults({ replyLoss: 0 });
    expect(await deleted).toEqual({ err: "OK", revision: expect.any(Number) });
    expect(await again).toMatchObject({ err: "OK", version: 1 });
    expect(await mine.get("k")).toMatchObject({ err: "OK", value: "again", version: 1 });
    expect(await mine.delete("k", { version: 7 })).toEqual({ err: "ErrVersion" });
    expect(await mine.delete("k")).toEqual({ err: "OK", revision: expect.any(Number) });
    expect(await mine.delete("k")).toEqual({ err: "ErrNoKey" });
    await expect(mine.delete("")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(mine.delete("k", { version: -1 })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
  });

  it("puts against a server without records: a lost reply, then the key deleted, then ErrNoKey is ErrMaybe", async () => {
    const kv = new KVServer(new MemoryStore({ retentionMs: 0 }));
    const withoutRecords: SimServer = {
      get: (key) => kv.get(key),
      put: (...args) => kv.put(...args),
      delete: (...args) => kv.delete(...args),
    };
    const net = new SimNetwork(withoutRecords, { seed: 6 });
    const [mine, other] = [0, 1].map((c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 })) as [Clerk, Clerk];
    await mine.put("k", "v1", 0);
    net.setFaults({ replyLoss: 1 });
    const put = mine.put("k", "v2", 1); // applied; its reply is lost
    await net.sleep(20);
    net.setFaults({ replyLoss: 0 });
    await other.delete("k"); // gone before the retry
    expect(await put).toEqual({ err: "ErrMaybe" });
  });

  it("deletes against a server without records: a lost reply then ErrNoKey is ErrMaybe (the lab's rule)", async () => {
    const kv = new KVServer(new MemoryStore({ retentionMs: 0 }));
    const withoutRecords: SimServer = {
      get: (key) => kv.get(key),
      put: (...args) => kv.put(...args),
      delete: (...args) => kv.delete(...args),
    };
    const net = new SimNetwork(withoutRecords, { seed: 5 });
    const clerk = new Clerk(net.transport(0), { clock: net, attemptTimeoutMs: 100 });
    await clerk.put("k", "v", 0);
    net.setFaults({ replyLoss: 1 });
    const deleted = clerk.delete("k"); // applied; the retry finds the key gone
    await net.sleep(20);
    net.setFaults({ replyLoss: 0 });
    expect(await deleted).toEqual({ err: "ErrMaybe" });
  });

  it("returns ErrMaybe when a try's reply was lost and a retry meets ErrVersion, against a server without records", async () => {
    const kv = new KVServer(new MemoryStore({ retentionMs: 0 }));
    const withoutRecords: SimServer = { get: (key) => kv.get(key), put: (...args) => kv.put(...args) }; // says nothing of records
    const net = new SimNetwork(withoutRecords, { seed: 3, replyLoss: 1 });
    const [mine, other] = [0, 1].map((c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 })) as [Clerk, Clerk];
    const put = mine.put("k", "mine", 0);
    await net.sleep(20);
    const theirs = other.put("k", "theirs", 1);
    await net.sleep(20);
    net.setFaults({ replyLoss: 0 });
    expect(await put).toEqual({ err: "ErrMaybe" });
    expect(await theirs).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
  });

  it("marks every try after the first as a retry, with the same id", async () => {
    const { net } = simulate(4);
    const inner = net.transport(0);
    const sent: PutRequest[] = [];
    let failures = 2;
    const transport: Transport = {
      get: (key, options) => inner.get(key, options),
      put: (request, options) => {
        sent.push(request);
        return failures-- > 0 ? Promise.reject(new NetworkError("lost")) : inner.put(request, options);
      },
      delete: (request, options) => inner.delete(request, options),
      close: () => inner.close(),
    };
    const clerk = new Clerk(transport, { clock: net, attemptTimeoutMs: 100 });
    expect(await clerk.put("k", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(sent.map((r) => r.retry)).toEqual([undefined, true, true]);
    expect(new Set(sent.map((r) => r.id)).size).toBe(1);
  });

  it("never returns ErrMaybe for keys with one writer each, at 30 % reply loss", async () => {
    const seed = testSeed();
    const sim = simulate(seed, { replyLoss: 0.3 }, 10);
    const results = await Promise.all(
      sim.clerks.map(async (clerk, c) => {
        const out: PutResult[] = [];
        for (let v = 0; v < 30; v++) out.push(await clerk.put(`own-${c}`, `v${v}`, v));
        return out;
      }),
    );
    const all = results.flat();
    expect(sim.net.stats.lostReplies, `seed ${seed}`).toBeGreaterThan(50);
    expect(
      all.filter((r) => r.err === "ErrMaybe"),
      `seed ${seed}`,
    ).toEqual([]);
    expect(all.every((r) => r.err === "OK")).toBe(true);
  });

  it("never returns ErrMaybe, and stays linearizable, with 10 writers on one key at 30 % reply loss (completion records)", async () => {
    const seed = testSeed();
    const sim = simulate(seed, { replyLoss: 0.3 }, 10);
    const history = await recordHistory({
      clients: 10,
      opsPerClient: 40,
      keys: ["hot"],
      seed,
      now: () => sim.net.now(),
      execute: sim.execute,
    });
    expect(sim.net.stats.timeouts, `seed ${seed}`).toBeGreaterThan(20); // replies were lost…
    expect(history.filter((e) => e.output?.err === "ErrMaybe").length, `seed ${seed}`).toBe(0); // …and every put still has its answer
    assertLinearizable(history, { seed });
  });

  it("issue #5's measurement again (seeds 1–10, 10 writers × 30 puts on one key, 30 % reply loss): 0 ErrMaybe, was 27.6 %", async () => {
    let puts = 0;
    let errMaybe = 0;
    for (let seed = 1; seed <= 10; seed++) {
      const sim = simulate(seed, { replyLoss: 0.3 }, 10);
      const history = await recordHistory({
        clients: 10,
        opsPerClient: 30,
        keys: ["hot"],
        putRate: 1,
        seed,
        now: () => sim.net.now(),
        execute: sim.execute,
      });
      puts += history.length;
      errMaybe += history.filter((e) => e.output?.err === "ErrMaybe").length;
      assertLinearizable(history, { seed });
    }
    expect(puts).toBe(3_000);
    expect(errMaybe).toBe(0);
  });

  it("against a server without records, returns ErrMaybe only after a try went unanswered, each consistent with the checker (the lab's rule)", async () => {
    const seed = testSeed();
    const kv = new KVServer(new MemoryStore({ retentionMs: 0 }));
    const net = new SimNetwork({ get: (key) => kv.get(key), put: (...args) => kv.put(...args) }, { seed, replyLoss: 0.3 });
    const clerks = Array.from({ length: 10 }, (_, c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 }));
    const history = await recordHistory({
      clients: 10,
      opsPerClient: 40,
      keys: ["hot"],
      seed,
      now: () => net.now(),
      execute: (c, op) => {
        const clerk = clerks[c] as Clerk;
        return op.kind === "get" ? clerk.get(op.key) : clerk.put(op.key, op.value, op.version);
      },
    });
    const maybes = history.filter((e) => e.output?.err === "ErrMaybe").length;
    expect(maybes, `seed ${seed}`).toBeGreaterThan(0); // the hot key does provoke them…
    expect(maybes, `seed ${seed}`).toBeLessThanOrEqual(net.stats.timeouts); // …never without a lost reply
    assertLinearizable(history, { seed });
  });

  it("the lab's TestUnreliableNet shape (100 tries, one client, lossy net): no ErrMaybe with put ids, some without", async () => {
    const tries = async (withIds: boolean) => {
      const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 6, requestLoss: 0.2, replyLoss: 0.2 });
      const t = net.transport(0);
      // Without ids the server can keep no record, and says so: the lab's rule.
      const withoutIds: Transport = {
        get: (k, o) => t.get(k, o),
        put: (r, o) => t.put({ ...r, id: undefined }, o),
        delete: (r, o) => t.delete({ ...r, id: undefined }, o),
        close: () => t.close(),
      };
      const clerk = new Clerk(withIds ? t : withoutIds, { clock: net, attemptTimeoutMs: 100 });
      const errs: string[] = [];
      let version = 0;
      for (let i = 0; i < 100; i++) {
        const r = await clerk.put("k", `v${i}`, version);
        errs.push(r.err);
        if (r.err === "OK") version = r.version;
        else if (r.err === "ErrMaybe") version = ((await clerk.get("k")) as { version: number }).version; // learn where it stands
      }
      return { errs, lost: net.stats.lostReplies };
    };
    const withIds = await tries(true);
    expect(withIds.lost).toBeGreaterThan(5);
    expect(withIds.errs.filter((e) => e !== "OK")).toEqual([]);
    const withoutIds = await tries(false);
    expect(withoutIds.errs.filter((e) => e === "ErrMaybe").length).toBeGreaterThan(0);
  });

  it("answers ErrMaybe once retryLimitMs passes with no reply, and retries refusals that applied nothing past it", async () => {
    const { net } = simulate(5, { replyLoss: 1 });
    const clerk = new Clerk(net.transport(0), { clock: net, attemptTimeoutMs: 100, retryLimitMs: 2_000 });
    const startedAt = net.now();
    expect(await clerk.put("k", "v", 0)).toEqual({ err: "ErrMaybe" });
    expect(net.now() - startedAt).toBeLessThanOrEqual(2_000 + 100);
    expect(net.now() - startedAt).toBeGreaterThan(1_000);

    let refusals = 0;
    const inner = net.transport(1);
    net.setFaults({ replyLoss: 0 });
    const refusingAWhile: Transport = {
      get: (key, options) => inner.get(key, options),
      put: (request, options) => (refusals++ < 40 ? Promise.reject(new UnavailableError("overloaded")) : inner.put(request, options)),
      delete: (request, options) => inner.delete(request, options),
      close: () => inner.close(),
    };
    const patient = new Clerk(refusingAWhile, { clock: net, retryLimitMs: 2_000, backoff: { baseMs: 100, maxMs: 200 } });
    const from = net.now();
    expect(await patient.put("k2", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(net.now() - from).toBeGreaterThan(2_000); // refused for longer than the limit, and applied in the end
  });
});

describe("Clerk.get long-poll (waitVersion, waitMs)", () => {
  it("keeps one wait through lost tries: it answers with the put made meanwhile, by its deadline", async () => {
    const seed = testSeed();
    const { net, clerks } = simulate(seed, {}, 2);
    const [waiter, writer] = clerks as [Clerk, Clerk];
    expect(await writer.put("k", "a", 0)).toMatchObject({ err: "OK" });
    net.setFaults({ requestLoss: 0.3, replyLoss: 0.3 });
    net.partition([0]); // the waiter's first tries are lost for sure
    const start = net.now();
    const waiting = waiter.get("k", { waitVersion: 1, waitMs: 3_000 });
    await net.sleep(500);
    net.heal();
    await net.sleep(500);
    const put = await writer.put("k", "b", 1);
    expect(put.err === "OK" || put.err === "ErrMaybe", `seed ${seed}`).toBe(true);
    expect(await waiting, `seed ${seed}`).toEqual({
      err: "OK",
      value: "b",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    // A lost wake-up costs the rest of the wait, never more: a retry waits only for what is left.
    expect(net.now() - start, `seed ${seed}`).toBeLessThan(3_000 + 2_000);
    expect(net.stats.partitioned, `seed ${seed}`).toBeGreaterThan(0);
  });

  it("answers with the state then once waitMs is over, retries included", async () => {
    const seed = testSeed();
    const { net, clerks } = simulate(seed, { requestLoss: 0.3, replyLoss: 0.3 }, 1);
    const clerk = clerks[0] as Clerk;
    await clerk.put("k", "a", 0);
    const start = net.now();
    expect(await clerk.get("k", { waitVersion: 1, waitMs: 2_000 }), `seed ${seed}`).toEqual({
      err: "OK",
      value: "a",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(net.now() - start, `seed ${seed}`).toBeGreaterThanOrEqual(2_000);
    expect(net.now() - start, `seed ${seed}`).toBeLessThan(2_000 + 3_000); // one wait, not one per try
    expect(await clerk.get("absent", { waitVersion: 0, waitMs: 500 })).toEqual({ err: "ErrNoKey" });
  });

  it("answers at once when the version already differs, and waits for a key to appear with waitVersion 0", async () => {
    const { net, clerks } = simulate(7, {}, 2);
    const [waiter, writer] = clerks as [Clerk, Clerk];
    await writer.put("k", "a", 0);
    expect(await waiter.get("k", { waitVersion: 0, waitMs: 10_000 })).toEqual({
      err: "OK",
      value: "a",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(net.now()).toBeLessThan(100);
    const appearing = waiter.get("new", { waitVersion: 0, waitMs: 10_000 });
    await net.sleep(1_000);
    await writer.put("new", "n", 0);
    expect(await appearing).toEqual({
      err: "OK",
      value: "n",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(net.now()).toBeLessThan(1_200);
  });

  it("keeps long-poll reads linearizable among puts, 10 clients, unreliable network", async () => {
    const seed = testSeed();
    const sim = simulate(seed, unreliable, 10);
    const lastSeen = new Map<string, number>(); // per client and key: wait for something newer
    const history = await recordHistory({
      clients: 10,
      opsPerClient: 40,
      keys: ["a", "b"],
      seed,
      now: () => sim.net.now(),
      execute: async (c, op) => {
        const clerk = sim.clerks[c] as Clerk;
        if (op.kind === "put") return clerk.put(op.key, op.value, op.version);
        const r = await clerk.get(op.key, { waitVersion: lastSeen.get(`${c}/${op.key}`) ?? 0, waitMs: 300 });
        lastSeen.set(`${c}/${op.key}`, r.err === "OK" ? r.version : 0);
        return r;
      },
    });
    expect(
      history.some((e) => e.op.kind === "get" && e.output !== undefined && (e.return as number) - e.call >= 300),
      `seed ${seed}`,
    ).toBe(true); // some did wait
    assertLinearizable(history, { seed });
  });

  it("rejects a wait given by halves or out of range with InvalidArgumentError before anything is sent", async () => {
    const { net, clerks } = simulate(8, {}, 1);
    const clerk = clerks[0] as Clerk;
    for (const options of [
      { waitVersion: 1 },
      { waitMs: 10 },
      { waitVersion: -1, waitMs: 10 },
      { waitVersion: 1, waitMs: 60_001 },
      { waitVersion: 1.5, waitMs: 10 },
    ]) {
      await expect(clerk.get("k", options)).rejects.toMatchObject({ name: "InvalidArgumentError", code: "ERR_INVALID_ARG_VALUE" });
    }
    expect(net.stats.requests).toBe(0);
  });
});

describe("Clerk arguments, aborts and close", () => {
  it("rejects bad arguments with InvalidArgumentError before anything is sent", async () => {
    const { net, clerks } = simulate(4, {}, 1);
    const clerk = clerks[0] as Clerk;
    for (const call of [
      () => clerk.get(""),
      () => clerk.get("\ud800"),
      () => clerk.put("k", "v", -1),
      () => clerk.put("k", "v", 1.5),
      () => clerk.put("k", "v", Number.MAX_SAFE_INTEGER + 1),
      () => clerk.put("k", 5 as unknown as string, 0),
    ]) {
      await expect(call()).rejects.toMatchObject({ name: "InvalidArgumentError", code: "ERR_INVALID_ARG_VALUE" });
    }
    expect(net.stats.requests).toBe(0);
  });

  it("rejects with AbortError at once for an aborted signal, and while retrying", async () => {
    const { net, clerks } = simulate(5, {}, 1);
    const clerk = clerks[0] as Clerk;
    await expect(clerk.get("k", { signal: AbortSignal.abort("no") })).rejects.toMatchObject({
      name: "AbortError",
      code: "ABORT_ERR",
      cause: "no",
    });
    expect(net.stats.requests).toBe(0);
    net.partition([0]);
    const ac = new AbortController();
    const stuck = clerk.put("k", "v", 0, { signal: ac.signal });
    await net.sleep(2_500); // a few tries have been lost
    ac.abort(new Error("gave up"));
    await expect(stuck).rejects.toMatchObject({ name: "AbortError", cause: { message: "gave up" } });
  });

  it("rejects calls after close with ERR_KV_CLOSED", async () => {
    const { clerks } = simulate(6, {}, 1);
    const clerk = clerks[0] as Clerk;
    await clerk.close();
    await clerk.close();
    await expect(clerk.get("k")).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
    await expect(clerk.put("k", "v", 0)).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
  });
});
