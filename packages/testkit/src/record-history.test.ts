import { describe, expect, it } from "vitest";
import { checkLinearizable } from "./check-linearizable";
import type { Event } from "./history";
import { assertLinearizable, recordHistory } from "./record-history";

const staleRead: Event[] = [
  { client: 0, op: { kind: "put", key: "k", value: "a", version: 0 }, call: 0, return: 1, output: { err: "OK", version: 1, revision: 1 } },
  { client: 0, op: { kind: "put", key: "k", value: "b", version: 1 }, call: 2, return: 3, output: { err: "OK", version: 2, revision: 2 } },
  {
    client: 1,
    op: { kind: "get", key: "k" },
    call: 4,
    return: 5,
    output: { err: "OK", value: "a", version: 1, modRevision: 1, createRevision: 1 },
  },
];

describe("assertLinearizable", () => {
  it("passes a linearizable history", () => {
    expect(() => assertLinearizable(staleRead.slice(0, 2), { seed: 1 })).not.toThrow();
  });

  it("fails with the seed to replay, the explanation and an excerpt of the history", () => {
    expect(() => assertLinearizable(staleRead, { seed: 4242 })).toThrow(
      /is illegal \(replay with KV_TEST_SEED=4242\):\n.*key "k"[\s\S]*c1 get\("k"\) → OK "a"@1[\s\S]*history excerpt:\nc0 put\("k","a",0\) → OK @1 \[0\.0, 1\.0\]/,
    );
  });
});

describe("recordHistory", () => {
  it("records every op with its call, and the return and output of those answered", async () => {
    let clock = 0;
    const history = await recordHistory({
      clients: 3,
      opsPerClient: 20,
      keys: ["a"],
      seed: 9,
      now: () => clock++,
      execute: async (client, op) => {
        if (client === 2) throw Object.assign(new Error("lost"), { code: "ERR_KV_NO_REPLY" });
        return op.kind === "get" ? { err: "ErrNoKey" } : { err: "ErrVersion" };
      },
    });
    expect(history).toHaveLength(60);
    const unanswered = history.filter((e) => e.return === undefined);
    expect(unanswered).toHaveLength(20);
    expect(unanswered.every((e) => e.client === 2 && e.output === undefined)).toBe(true);
    expect(history.filter((e) => e.client !== 2).every((e) => (e.return as number) > e.call)).toBe(true);
  });

  it("stamps strictly increasing times in the order things happened, even from a clock that stands still", async () => {
    const history = await recordHistory({
      clients: 4,
      opsPerClient: 10,
      keys: ["a"],
      seed: 3,
      now: () => 1000,
      execute: async () => ({ err: "ErrNoKey" }),
    });
    const stamps = history.flatMap((e) => [e.call, e.return as number]).sort((a, b) => a - b);
    expect(new Set(stamps).size).toBe(80);
    for (const client of [0, 1, 2, 3]) {
      const own = history.filter((e) => e.client === client);
      own.slice(1).forEach((e, i) => expect(e.call).toBeGreaterThan(own[i]?.return as number));
    }
    expect(() => checkLinearizable(history)).not.toThrow(); // no client's ops touch
  });

  it("fails the run on an error that is not a lost reply", async () => {
    const run = recordHistory({
      clients: 1,
      opsPerClient: 1,
      keys: ["a"],
      seed: 1,
      now: () => 0,
      execute: async () => {
        throw new TypeError("bug");
      },
    });
    await expect(run).rejects.toThrow("bug");
  });
});
