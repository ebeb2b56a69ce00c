import { Clerk, KvError, type PutResult, type Transport } from "@kv/clerk";
import { type CompletionRecordOptions, KVServer, MemoryStore } from "@kv/server";
import { SimNetwork, type SimNetworkOptions, type SimServer, testSeed } from "@kv/testkit";
import { describe, expect, it } from "vitest";
import { createLock, type Lock, LockNotHeldError, UNLOCKED } from "./lock";

function simulate(seed: number, clients: number, faults: Omit<SimNetworkOptions, "seed"> = {}) {
  const net = new SimNetwork(new KVServer(new MemoryStore()), { seed, ...faults });
  const clerks = Array.from({ length: clients }, (_, c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 }));
  const locks = clerks.map((clerk) => createLock(clerk, "lock", { clock: net }));
  return { net, clerks, locks };
}

/**
 * Every client enters the critical section `sections` times; inside, it read-modify-writes a
 * shared counter and checks that nobody else is inside.
 */
async function contend(seed: number, faults: Omit<SimNetworkOptions, "seed">, clients = 10, sections = 5) {
  const { net, clerks, locks } = simulate(seed, clients, faults);
  let inside = -1;
  const overlaps: string[] = [];
  const tokens: number[] = [];
  await Promise.all(
    locks.map(async (lock, c) => {
      const clerk = clerks[c] as Clerk;
      for (let i = 0; i < sections; i++) {
        const hold = await lock.acquire();
        if (inside !== -1) overlaps.push(`client ${c} entered while ${inside} was inside`);
        inside = c;
        tokens.push(hold.token);
        const seen = await clerk.get("counter");
        const n = seen.err === "OK" ? Number(seen.value) : 0;
        const wrote = await clerk.put("counter", String(n + 1), seen.err === "OK" ? seen.version : 0);
        if (wrote.err !== "OK") overlaps.push(`client ${c}'s counter put got ${wrote.err}`);
        await net.sleep(1);
        inside = -1;
        await lock.release();
        expect(hold.signal.aborted).toBe(true);
      }
    }),
  );
  const counter = await (clerks[0] as Clerk).get("counter");
  return { net, overlaps, tokens, counter };
}

describe("Lock over the simulated network", () => {
  it("one client: creates the key, acquires, releases, acquires again with a larger token", async () => {
    const { locks, clerks } = simulate(1, 1);
    const lock = locks[0] as Lock;
    const first = await lock.acquire();
    expect(await (clerks[0] as Clerk).get("lock")).toEqual({
      err: "OK",
      value: lock.id,
      version: expect.any(Number),
      modRevision: first.token,
      createRevision: expect.any(Number),
    });
    await lock.release();
    expect(first.signal.aborted).toBe(true);
    expect(await (clerks[0] as Clerk).get("lock")).toMatchObject({ value: UNLOCKED, version: first.token + 1 });
    const second = await lock.acquire();
    expect(second.token).toBeGreaterThan(first.token);
  });

  it.each([
    ["a reliable network", {}],
    ["20 % loss each way", { requestLoss: 0.2, replyLoss: 0.2 }],
  ])("keeps 10 contending clients mutually exclusive on %s, with strictly increasing tokens", async (_, faults) => {
    const seed = testSeed();
    const { overlaps, tokens, counter } = await contend(seed, faults);
    expect(overlaps, `seed ${seed}`).toEqual([]);
    expect(counter, `seed ${seed}`).toMatchObject({ err: "OK", value: "50" });
    expect(
      tokens.slice(1).every((t, i) => t > (tokens[i] as number)),
      `seed ${seed}: ${tokens.join()}`,
    ).toBe(true);
  });

  it("gives a holder that acquires again its hold at once", async () => {
    const { net, locks } = simulate(2, 1);
    const lock = locks[0] as Lock;
    const hold = await lock.acquire();
    const before = net.stats.requests;
    const again = await lock.acquire();
    expect(again.token).toBe(hold.token);
    expect(net.stats.requests).toBe(before);
  });

  it("rejects release by a Lock that does not hold the key, and changes nothing", async () => {
    const { locks, clerks } = simulate(3, 2);
    const [holder, other] = locks as [Lock, Lock];
    const hold = await holder.acquire();
    await expect(other.release()).rejects.toMatchObject({ name: "LockNotHeldError", code: "ERR_LOCK_NOT_HELD" });
    await expect(other.release()).rejects.toBeInstanceOf(LockNotHeldError);
    expect(await (clerks[0] as Clerk).get("lock")).toEqual({
      err: "OK",
      value: holder.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
    expect(hold.signal.aborted).toBe(false);
  });

  it("stops waiting with AbortError when acquire is aborted, leaving the holder in place", async () => {
    const { net, locks, clerks } = simulate(4, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    const hold = await holder.acquire();
    const ac = new AbortController();
    const waiting = waiter.acquire({ signal: ac.signal });
    await net.sleep(500);
    ac.abort(new Error("enough"));
    await expect(waiting).rejects.toMatchObject({ name: "AbortError", code: "ABORT_ERR" });
    expect(await (clerks[0] as Clerk).get("lock")).toEqual({
      err: "OK",
      value: holder.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
    await expect(waiter.acquire({ signal: AbortSignal.abort() })).rejects.toMatchObject({ name: "AbortError" });
  });

  it("waits on the server: a waiter sends a few requests over a 30 s hold, and holds the lock within a round trip of the release", async () => {
    const { net, locks } = simulate(8, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    await holder.acquire();
    let acquiredAt = -1;
    const waiting = waiter.acquire().then((h) => ((acquiredAt = net.now()), h));
    await net.sleep(100);
    const before = net.stats.requests;
    await net.sleep(30_000);
    expect(net.stats.requests - before).toBeLessThanOrEqual(4); // a long-poll every 10 s, no polling
    const releasedAt = net.now();
    await holder.release();
    await waiting;
    expect(acquiredAt - releasedAt).toBeLessThan(30); // the release's put, the wake, the acquiring put: a few 0–5 ms messages
  });

  it("hands the lock to a waiter once it is released", async () => {
    const { net, locks } = simulate(5, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    const first = await holder.acquire();
    let acquiredAt = -1;
    const waiting = waiter.acquire().then((h) => ((acquiredAt = net.now()), h));
    await net.sleep(300);
    expect(acquiredAt).toBe(-1);
    const releasedAt = net.now();
    await holder.release();
    const second = await waiting;
    expect(acquiredAt).toBeGreaterThan(releasedAt);
    expect(second.token).toBe(first.token + 2); // one version for the release, one for the acquire
  });
});

/** A put's fate at the scripted server: as usual, lost on its way there, or applied with its reply lost. */
type Fate = "deliver" | "lose-request" | "lose-reply";

/**
 * Two Locks on one key over a simulated network whose server loses the messages a test picks,
 * and clerks that remember what each of their puts returned.
 */
function scripted(records?: CompletionRecordOptions) {
  const kv = new KVServer(new MemoryStore(records));
  let fateOf: (value: string) => Fate = () => "deliver";
  let isReplyLost = false;
  const deliverReplies = () => {
    if (isReplyLost) net.setFaults({ replyLoss: 0 }); // only the chosen reply is lost
    isReplyLost = false;
  };
  const server: SimServer = {
    get: (key) => (deliverReplies(), kv.get(key)),
    async put(key, value, version, id) {
      deliverReplies();
      const fate = fateOf(value);
      if (fate !== "deliver") fateOf = () => "deliver"; // each script loses one message
      isReplyLost = fate !== "deliver";
      if (isReplyLost) net.setFaults({ replyLoss: 1 });
      return fate === "lose-request" ? { err: "ErrVersion" } : kv.put(key, value, version, id); // a lost request's answer is never seen
    },
  };
  const net = new SimNetwork(server, { seed: 7 });
  const puts: PutResult["err"][][] = [[], []];
  const clerks = [0, 1].map(
    (c) =>
      new (class extends Clerk {
        override async put(...args: Parameters<Clerk["put"]>): Promise<PutResult> {
          const r = await super.put(...args);
          puts[c]?.push(r.err);
          return r;
        }
      })(net.transport(c), { clock: net, attemptTimeoutMs: 100 }),
  );
  const [a, b] = clerks.map((clerk) => createLock(clerk, "lock", { clock: net })) as [Lock, Lock];
  return { net, kv, a, b, puts, script: (f: (value: string) => Fate) => void (fateOf = f) };
}

describe("fencing tokens are store revisions", () => {
  it("keep growing when the lock key is deleted and created again, which starts its version over", async () => {
    const { clerks, locks } = simulate(testSeed(), 2);
    const [a, b] = locks as [Lock, Lock];
    const first = await a.acquire();
    expect(await (clerks[0] as Clerk).get("lock")).toMatchObject({ value: a.id, modRevision: first.token });
    await a.release();
    const deleted = await (clerks[1] as Clerk).delete("lock"); // someone tidies the key away
    if (deleted.err !== "OK") throw new Error(`delete: ${deleted.err}`);
    const second = await b.acquire(); // the key is created again, at version 1, and taken
    const seen = await (clerks[1] as Clerk).get("lock");
    expect(seen).toMatchObject({ value: b.id, version: 2, modRevision: second.token });
    expect(second.token).toBeGreaterThan(deleted.revision);
    expect(second.token).toBeGreaterThan(first.token);
    await b.release();
  });
});

describe("Lock when a reply is lost (ErrMaybe)", () => {
  it("re-reads after ErrMaybe in acquire and waits when another client took the lock meanwhile", async () => {
    const { net, kv, a, b, puts, script } = scripted();
    let aHolds: Promise<unknown> | undefined;
    script((value) => {
      if (value !== b.id) return "deliver";
      aHolds = a.acquire(); // b's request is lost; a takes the lock before b's retry
      return "lose-request";
    });
    let bHeld = false;
    const bWaits = b.acquire().then((hold) => ((bHeld = true), hold));
    await net.sleep(1_000);
    const aHold = (await aHolds) as Awaited<ReturnType<Lock["acquire"]>>;
    expect(puts[1]).toContain("ErrMaybe");
    expect(bHeld).toBe(false); // b learned from its re-read that a holds the lock
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: a.id,
      version: expect.any(Number),
      modRevision: aHold.token,
      createRevision: expect.any(Number),
    });
    await a.release();
    expect((await bWaits).token).toBeGreaterThan(aHold.token);
  });

  it("ends in a hold when the acquiring put landed but its reply was lost", async () => {
    const { kv, b, puts, script } = scripted();
    script((value) => (value === b.id ? "lose-reply" : "deliver"));
    const hold = await b.acquire();
    expect(puts[1]).toEqual(["OK", "OK"]); // the lock key's creation, then the retried put, recognised by its id
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: b.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
  });

  it("re-reads after ErrMaybe in release and resolves once the lock has moved on (a server without records)", async () => {
    const { kv, a, b, puts, script } = scripted({ retentionMs: 0 });
    const aHold = await a.acquire();
    let bHolds: Promise<Awaited<ReturnType<Lock["acquire"]>>> | undefined;
    script((value) => {
      if (value !== UNLOCKED) return "deliver";
      bHolds = b.acquire(); // a's release lands; b acquires before a's retry
      return "lose-reply";
    });
    await a.release();
    expect(puts[0]?.at(-1)).toBe("ErrMaybe");
    expect(aHold.signal.aborted).toBe(true);
    const bHold = await (bHolds as Promise<Awaited<ReturnType<Lock["acquire"]>>>);
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: b.id,
      version: expect.any(Number),
      modRevision: bHold.token,
      createRevision: expect.any(Number),
    });
  });

  it("lets release clear a hold that an aborted acquire left behind", async () => {
    const { net, kv, b, script } = scripted();
    const ac = new AbortController();
    script((value) => {
      if (value === b.id) void net.sleep(10).then(() => ac.abort(new Error("gave up")));
      return value === b.id ? "lose-reply" : "deliver"; // b's put lands, then b gives up before its retry
    });
    await expect(b.acquire({ signal: ac.signal })).rejects.toMatchObject({ name: "AbortError" });
    expect(await kv.get("lock")).toMatchObject({ value: b.id });
    await b.release();
    expect(await kv.get("lock")).toMatchObject({ value: UNLOCKED });
  });

  it("gives the hold an aborted acquire left behind to the next acquire of the same Lock", async () => {
    const { net, kv, b, script } = scripted();
    const ac = new AbortController();
    script((value) => {
      if (value === b.id) void net.sleep(10).then(() => ac.abort(new Error("gave up")));
      return value === b.id ? "lose-reply" : "deliver";
    });
    await expect(b.acquire({ signal: ac.signal })).rejects.toMatchObject({ name: "AbortError" });
    const hold = await b.acquire();
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: b.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
  });

  it("rejects release of a key never used with LockNotHeldError, and creates nothing", async () => {
    const { kv, a } = scripted();
    await expect(a.release()).rejects.toMatchObject({ code: "ERR_LOCK_NOT_HELD" });
    expect(await kv.get("lock")).toEqual({ err: "ErrNoKey" });
  });
});

describe("Lock when its key is lost or its clerk fails", () => {
  it("creates the key again and acquires when its put meets ErrNoKey (the key gone since it was read)", async () => {
    let kv = new KVServer(new MemoryStore());
    const server: SimServer = {
      get: (key) => kv.get(key),
      put(key, value, version, id) {
        if (value === lock.id && version > 0 && kv === first) kv = new KVServer(new MemoryStore()); // the store lost the key
        return kv.put(key, value, version, id);
      },
    };
    const first = kv;
    const net = new SimNetwork(server, { seed: 11 });
    const lock = createLock(new Clerk(net.transport(0), { clock: net }), "lock", { clock: net });
    const hold = await lock.acquire();
    expect(kv).not.toBe(first);
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: lock.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
  });

  it("keeps a hold without a lease, and writes nothing more, when release fails permanently", async () => {
    const kv = new KVServer(new MemoryStore());
    const net = new SimNetwork(kv, { seed: 12 });
    const inner = net.transport(0);
    let isRefusing = false;
    const transport: Transport = {
      get: (key, options) => inner.get(key, options),
      put: (request, options) =>
        isRefusing ? Promise.reject(new KvError("ERR_KV_UNAUTHORIZED", "token revoked")) : inner.put(request, options),
      delete: (request, options) => inner.delete(request, options),
      close: () => inner.close(),
    };
    const lock = createLock(new Clerk(transport, { clock: net }), "lock", { clock: net });
    const hold = await lock.acquire();
    isRefusing = true;
    await expect(lock.release()).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
    await net.sleep(10_000);
    expect(hold.signal.aborted).toBe(false);
    expect(await kv.get("lock")).toEqual({
      err: "OK",
      value: lock.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
    isRefusing = false;
    await lock.release();
    expect(hold.signal.aborted).toBe(true);
  });
});
