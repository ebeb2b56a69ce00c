import { Clerk } from "@kv/clerk";
import { KVServer, MemoryStore } from "@kv/server";
import { SimNetwork, type SimNetworkOptions, testSeed } from "@kv/testkit";
import { describe, expect, it } from "vitest";
import { createLock, type Hold, type Lock } from "./lock";

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
    expect(tokens.slice(1).every((t, i) => t > (tokens[i] as number)), `seed ${seed}: ${tokens.join()}`).toBe(true);
    expect(net.stats.lostRequests + net.stats.lostReplies, `seed ${seed}`).toBeGreaterThan(50);
  });

  it("rejects a ttlMs that is not an integer of at least 3 with InvalidArgumentError", () => {
    const { clerks } = simulate(5, 1);
    for (const ttlMs of [0, 2, 1.5, -1, Number.NaN]) {
      expect(() => createLock(clerks[0] as Clerk, "lock", { ttlMs })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
    }
  });
});
