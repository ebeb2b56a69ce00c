import { Clerk, KvError, type Transport } from "@kv/clerk";
import { KVServer, MemoryStore } from "@kv/server";
import { SimNetwork, type SimNetworkOptions, type SimServer, testSeed } from "@kv/testkit";
import { describe, expect, it } from "vitest";
import { createLock, type Hold, type Lock, UNLOCKED } from "./lock";

const TTL_MS = 1_000;

/** Locks with leases over a simulated network, in virtual time: the network is the clock. */
function simulate(seed: number, clients: number, faults: Omit<SimNetworkOptions, "seed"> = {}) {
  const kv = new KVServer(new MemoryStore());
  const net = new SimNetwork(kv, { seed, ...faults });
  const clerks = Array.from({ length: clients }, (_, c) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 }));
  const locks = clerks.map((clerk) => createLock(clerk, "lock", { clock: net, ttlMs: TTL_MS }));
  return { kv, net, clerks, locks };
}

/** When `hold`'s signal aborted (virtual ms), once it has. */
function abortTime(net: SimNetwork, hold: Hold): { at: number | undefined; reason: unknown } {
  const seen: { at: number | undefined; reason: unknown } = { at: undefined, reason: undefined };
  hold.signal.addEventListener("abort", () => {
    seen.at = net.now();
    seen.reason = hold.signal.reason;
  });
  return seen;
}

describe("Lock with a lease (ttlMs) over the simulated network", () => {
  it("keeps a live holder's lease for as long as it holds, renewing it every ttlMs/3", async () => {
    const { net, locks, kv } = simulate(1, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    const hold = await holder.acquire();
    const contender = waiter.acquire();
    let isAcquired = false;
    void contender.then(() => (isAcquired = true));
    await net.sleep(10 * TTL_MS);
    expect(isAcquired).toBe(false);
    expect(hold.signal.aborted).toBe(false);
    const seen = await kv.get("lock");
    expect(seen).toMatchObject({ value: holder.id });
    expect((seen as { version: number }).version).toBeGreaterThanOrEqual(hold.token + 25); // ~3 renewals per ttlMs
    await holder.release();
    expect((await contender).token).toBeGreaterThan(hold.token);
  });

  it("hands a killed holder's lock to a waiter once ttlMs has passed, with a larger token", async () => {
    const { net, clerks, locks } = simulate(2, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    const first = await holder.acquire();
    const lost = abortTime(net, first);
    let acquiredAt = -1;
    const waiting = waiter.acquire().then((h) => ((acquiredAt = net.now()), h));
    await net.sleep(TTL_MS / 2);
    const killedAt = net.now();
    await (clerks[0] as Clerk).close(); // the holder stops renewing: nothing of it reaches the server again
    const second = await waiting;
    expect(acquiredAt - killedAt).toBeGreaterThan(TTL_MS / 2); // no sooner than its last renewal's lease allows…
    expect(acquiredAt - killedAt).toBeLessThan(2 * TTL_MS); // …and not much later
    expect(second.token).toBeGreaterThan(first.token);
    expect(lost.at).toBeDefined();
    expect(lost.at as number).toBeLessThan(acquiredAt);
    expect(lost.reason).toMatchObject({ name: "LeaseLostError", code: "ERR_LOCK_LEASE_LOST" });
  });

  it("aborts a partitioned holder's signal before the waiter takes the lock over", async () => {
    const seed = testSeed();
    const { net, locks, kv } = simulate(seed, 2);
    const [holder, waiter] = locks as [Lock, Lock];
    const first = await holder.acquire();
    let keyAtAbort: unknown;
    const lost = abortTime(net, first);
    first.signal.addEventListener("abort", () => void kv.get("lock").then((r) => (keyAtAbort = r)));
    const waiting = waiter.acquire();
    await net.sleep(TTL_MS / 3 + 10);
    net.partition([0]);
    const second = await waiting;
    const takenAt = net.now();
    expect(lost.at, `seed ${seed}`).toBeDefined();
    expect(lost.at as number, `seed ${seed}`).toBeLessThan(takenAt);
    expect(keyAtAbort, `seed ${seed}`).toMatchObject({ value: holder.id }); // nobody had taken it yet
    expect(second.token, `seed ${seed}`).toBeGreaterThan(first.token);
    net.heal();
    // The old holder, back, holds nothing: its next acquire waits like anyone's.
    await expect(holder.release()).rejects.toMatchObject({ code: "ERR_LOCK_NOT_HELD" });
    expect(await kv.get("lock")).toMatchObject({ value: waiter.id });
  });

  it("keeps 10 contenders mutually exclusive at 20 % loss each way while holders are cut off, with strictly increasing tokens", async () => {
    const seed = testSeed();
    const { net, locks } = simulate(seed, 10, { requestLoss: 0.2, replyLoss: 0.2 });
    const inside = new Map<number, Hold>();
    const violations: string[] = [];
    const tokens: number[] = [];
    let cutOff = 0;
    const check = (c: number) => {
      for (const [other, hold] of inside) {
        if (other !== c && !hold.signal.aborted) violations.push(`client ${c} inside at ${net.now()} while ${other} still holds`);
      }
    };
    await Promise.all(
      locks.map(async (lock, c) => {
        for (let i = 0; i < 4; i++) {
          const hold = await lock.acquire();
          tokens.push(hold.token);
          inside.set(c, hold);
          check(c);
          // Three clients are cut off for good while they hold the lock, and work on until
          // their signal says the hold is over; the others take the lock over meanwhile.
          const isCutOff = c < 3 && i === 1;
          if (isCutOff) net.partition([c]);
          // Work in steps; stop at the first step after the signal aborted, as a user must.
          for (let step = 0; step < (isCutOff ? 100 : 5) && !hold.signal.aborted; step++) {
            await net.sleep(50);
            if (!hold.signal.aborted) check(c);
          }
          inside.delete(c);
          if (isCutOff) {
            expect(hold.signal.aborted).toBe(true);
            cutOff++;
            return;
          }
          if (!hold.signal.aborted) await lock.release();
        }
      }),
    );
    expect(cutOff).toBe(3);
    expect(violations, `seed ${seed}`).toEqual([]);
    expect(tokens.length).toBe(3 * 2 + 7 * 4);
    expect(
      tokens.slice(1).every((t, i) => t > (tokens[i] as number)),
      `seed ${seed}: ${tokens.join()}`,
    ).toBe(true);
    expect(net.stats.lostRequests + net.stats.lostReplies, `seed ${seed}`).toBeGreaterThan(50);
  });

  it("counts a renewal's lease from when it was sent, not from when its delayed reply came", async () => {
    const kv = new KVServer(new MemoryStore());
    let holderId = "";
    let renewals = 0;
    // The holder's first renewal lands but its reply is cut off; its second never lands.
    const server: SimServer = {
      get: (key) => kv.get(key),
      async put(key, value, version, id) {
        if (value !== holderId) return kv.put(key, value, version, id);
        renewals++;
        if (renewals === 2) net.partition([0]); // the first renewal's reply is lost
        if (renewals >= 4) {
          net.partition([0]); // from the second renewal on: cut off for good
          return { err: "ErrVersion" };
        }
        return kv.put(key, value, version, id);
      },
    };
    const net = new SimNetwork(server, { seed: 9 });
    const [holder, waiter] = [0, 1].map((c) =>
      createLock(new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 }), "lock", { clock: net, ttlMs: TTL_MS }),
    ) as [Lock, Lock];
    holderId = holder.id;
    const first = await holder.acquire(); // renewals = 1
    const lost = abortTime(net, first);
    const waiting = waiter.acquire();
    await net.sleep(TTL_MS / 3 + 50); // the renewal landed; its reply is lost
    expect(renewals).toBe(2);
    await net.sleep(300);
    net.heal([0]); // its retry (the same put id) is answered OK now, 300 ms after it was sent
    const second = await waiting;
    const takenAt = net.now();
    expect(renewals).toBeGreaterThanOrEqual(3);
    expect(lost.at).toBeDefined();
    expect(lost.at as number).toBeLessThan(takenAt);
    expect(second.token).toBeGreaterThan(first.token);
  });

  it("takes the holder's lease from the key: never over a holder without one, and not before the holder's ttlMs", async () => {
    const seed = testSeed();
    const kv = new KVServer(new MemoryStore());
    const net = new SimNetwork(kv, { seed });
    const clerk = (c: number) => new Clerk(net.transport(c), { clock: net, attemptTimeoutMs: 100 });
    const forever = createLock(clerk(0), "lock", { clock: net });
    const impatient = createLock(clerk(1), "lock", { clock: net, ttlMs: 100 });
    await forever.acquire();
    let isTaken = false;
    const waiting = impatient.acquire().then((h) => ((isTaken = true), h));
    await net.sleep(20 * 100);
    expect(isTaken, `seed ${seed}`).toBe(false); // a lock without a lease is held until released
    await forever.release();
    await waiting;
    await impatient.release();

    const patient = createLock(clerk(2), "lock", { clock: net, ttlMs: 3_000 });
    const held = await patient.acquire();
    const lost = abortTime(net, held);
    net.partition([2]);
    const taken = await impatient.acquire();
    const takenAt = net.now();
    expect(lost.at, `seed ${seed}`).toBeDefined();
    expect(lost.at as number, `seed ${seed}`).toBeLessThan(takenAt);
    expect(takenAt, `seed ${seed}`).toBeGreaterThan(2_000 + 3_000); // the holder's 3 s lease, not the waiter's 100 ms
    expect(taken.token).toBeGreaterThan(held.token);
  });

  it("backs off, never spins, when the server answers its waits at once", async () => {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed: 6 });
    const holder = createLock(new Clerk(net.transport(0), { clock: net }), "lock", { clock: net });
    await holder.acquire();
    const impatientServer = net.transport(1);
    const noWaits = {
      ...impatientServer,
      get: (key: string, options?: Parameters<typeof impatientServer.get>[1]) => impatientServer.get(key, { ...options, wait: undefined }),
    };
    const waiter = createLock(new Clerk(noWaits, { clock: net }), "lock", { clock: net });
    const ac = new AbortController();
    const waiting = waiter.acquire({ signal: ac.signal }).catch((err: unknown) => err);
    const before = net.stats.requests;
    await net.sleep(10_000);
    expect(net.stats.requests - before).toBeLessThan(50); // about one read a second, not one every few ms
    ac.abort();
    expect(await waiting).toMatchObject({ name: "AbortError" });
  });

  it("goes on renewing a hold whose release failed permanently", async () => {
    const kv = new KVServer(new MemoryStore());
    const net = new SimNetwork(kv, { seed: 8 });
    const inner = net.transport(0);
    const refusesUnlocking: Transport = {
      get: (key, options) => inner.get(key, options),
      put: (request, options) =>
        request.value === UNLOCKED && request.version > 0
          ? Promise.reject(new KvError("ERR_KV_UNAUTHORIZED", "token revoked"))
          : inner.put(request, options),
      delete: (request, options) => inner.delete(request, options),
      close: () => inner.close(),
    };
    const lock = createLock(new Clerk(refusesUnlocking, { clock: net }), "lock", { clock: net, ttlMs: TTL_MS });
    const hold = await lock.acquire();
    await expect(lock.release()).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
    await net.sleep(5 * TTL_MS);
    expect(hold.signal.aborted).toBe(false);
    const seen = await kv.get("lock");
    expect(seen).toMatchObject({ value: lock.id });
    expect((seen as { version: number }).version).toBeGreaterThanOrEqual(hold.token + 12); // ~3 renewals per ttlMs
  });

  it("rejects a ttlMs that is not an integer of at least 3 with InvalidArgumentError", () => {
    const { clerks } = simulate(5, 1);
    for (const ttlMs of [0, 2, 1.5, -1, Number.NaN]) {
      expect(() => createLock(clerks[0] as Clerk, "lock", { ttlMs })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
    }
  });
});
