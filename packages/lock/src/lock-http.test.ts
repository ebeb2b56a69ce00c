import { type Clerk, createClerk } from "@kv/clerk";
import { createFaultProxy, type ServerProcess, startServerProcess, testSeed } from "@kv/testkit";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { createLock } from "./lock";

let server: ServerProcess;
beforeAll(async () => {
  server = await startServerProcess();
});
afterAll(() => server.stop());

describe("Lock over HTTP through the fault proxy (resets, drops, blackholes)", () => {
  it("keeps 10 contending clients mutually exclusive, with strictly increasing tokens", async () => {
    const seed = testSeed();
    const proxy = await createFaultProxy({
      target: { host: "127.0.0.1", port: server.port },
      seed,
      connection: { reset: 0.05, blackhole: 0.04 },
      request: { reset: 0.05, drop: 0.05, blackhole: 0.04 },
      reply: { reset: 0.05, drop: 0.05 },
    });
    onTestFinished(() => proxy.close());
    const key = `lock-${seed}`;
    const counterKey = `counter-${seed}`;
    const clerks: Clerk[] = Array.from({ length: 10 }, () =>
      createClerk({ endpoints: [proxy.url], attemptTimeoutMs: 300, backoff: { baseMs: 5, maxMs: 100 } }),
    );
    onTestFinished(() => Promise.all(clerks.map((c) => c.close())).then(() => undefined));
    let inside = -1;
    const problems: string[] = [];
    const tokens: number[] = [];
    await Promise.all(
      clerks.map(async (clerk, c) => {
        const lock = createLock(clerk, key);
        for (let i = 0; i < 3; i++) {
          const hold = await lock.acquire();
          if (inside !== -1) problems.push(`client ${c} entered while ${inside} was inside`);
          inside = c;
          tokens.push(hold.token);
          const seen = await clerk.get(counterKey);
          const wrote = await clerk.put(
            counterKey,
            String(seen.err === "OK" ? Number(seen.value) + 1 : 1),
            seen.err === "OK" ? seen.version : 0,
          );
          if (wrote.err !== "OK") problems.push(`client ${c}'s counter put got ${wrote.err}`);
          inside = -1;
          await lock.release();
        }
      }),
    );
    expect(problems, `seed ${seed}`).toEqual([]);
    expect(await (clerks[0] as Clerk).get(counterKey)).toMatchObject({ err: "OK", value: "30" });
    expect(
      tokens.slice(1).every((t, i) => t > (tokens[i] as number)),
      `seed ${seed}: ${tokens.join()}`,
    ).toBe(true);
    for (const fault of ["reset", "dropped", "blackholed"] as const)
      expect(proxy.stats[fault], `seed ${seed}: ${fault}`).toBeGreaterThan(0);
  });
});

describe("Lock over HTTP", () => {
  it("re-acquires at once, refuses release by a non-holder, and lets an aborted waiter leave the holder in place", async () => {
    const clerk = createClerk({ endpoints: [server.url] });
    onTestFinished(() => clerk.close());
    const key = `lock-plain-${testSeed()}`;
    const [holder, other] = [createLock(clerk, key), createLock(clerk, key)];
    const hold = await holder.acquire();
    expect((await holder.acquire()).token).toBe(hold.token);
    await expect(other.release()).rejects.toMatchObject({ code: "ERR_LOCK_NOT_HELD" });
    await expect(other.acquire({ signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: "AbortError" });
    expect(await clerk.get(key)).toEqual({
      err: "OK",
      value: holder.id,
      version: expect.any(Number),
      modRevision: hold.token,
      createRevision: expect.any(Number),
    });
    await holder.release();
    expect(hold.signal.aborted).toBe(true);
    expect((await other.acquire()).token).toBe(hold.token + 2);
  });
});
