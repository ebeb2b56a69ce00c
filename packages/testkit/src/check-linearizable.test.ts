import { type GetResult, InvalidArgumentError, type PutResult } from "@kv/rpc";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkLinearizable } from "./check-linearizable";
import type { Event, Op } from "./history";

const get = (client: number, call: number, ret: number | undefined, output?: GetResult, key = "k"): Event => ({
  client,
  op: { kind: "get", key },
  call,
  ...(ret === undefined ? {} : { return: ret, output }),
});
const put = (
  client: number,
  call: number,
  ret: number | undefined,
  value: string,
  version: number,
  output?: PutResult,
  key = "k",
): Event => ({
  client,
  op: { kind: "put", key, value, version },
  call,
  ...(ret === undefined ? {} : { return: ret, output }),
});
// One key's histories: its n-th write is the store's n-th, so revisions are versions here.
const OK = (version: number, revision = version): PutResult => ({ err: "OK", version, revision });
const read = (value: string, version: number, modRevision = version, createRevision = 1): GetResult => ({
  err: "OK",
  value,
  version,
  modRevision,
  createRevision,
});
const NoKey = { err: "ErrNoKey" } as const;
const Version = { err: "ErrVersion" } as const;
const Maybe = { err: "ErrMaybe" } as const;

describe("checkLinearizable on hand-written histories", () => {
  it("accepts an empty history", () => {
    expect(checkLinearizable([])).toEqual({ result: "ok" });
  });

  it("accepts a sequential history that follows contract §2", () => {
    const h = [
      get(0, 0, 1, NoKey),
      put(0, 2, 3, "a", 1, NoKey),
      put(0, 4, 5, "a", 0, OK(1)),
      put(1, 6, 7, "b", 0, Version),
      get(1, 8, 9, read("a", 1)),
      put(1, 10, 11, "b", 1, OK(2)),
      get(0, 12, 13, read("b", 2)),
    ];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("accepts concurrent ops whose only valid order differs from their call order", () => {
    // c1's put is called first but takes effect after c0's: its version names c0's write.
    const h = [put(1, 0, 10, "b", 1, OK(2)), put(0, 1, 5, "a", 0, OK(1)), get(2, 11, 12, read("b", 2))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("catches a stale read", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, 3, "b", 1, OK(2)), get(1, 4, 5, read("a", 1))];
    const r = checkLinearizable(h);
    expect(r).toMatchObject({ result: "illegal", key: "k" });
    if (r.result !== "illegal") return;
    expect(r.explanation).toContain('The longest consistent order places 2, ending with:\n  c0 put("k","a",0) → OK @1');
    expect(r.explanation).toContain('the key is at version 2, value "b", and none of these may come next:\n  c1 get("k") → OK "a"@1');
  });

  it("catches a lost update: two puts at the same version both OK", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(1, 2, 5, "b", 1, OK(2)), put(2, 3, 6, "c", 1, OK(2))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal", key: "k" });
  });

  it("catches two creates that both answered OK", () => {
    const h = [put(0, 0, 5, "a", 0, OK(1)), put(1, 1, 6, "b", 0, OK(1))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("catches a put seen before its call", () => {
    const h = [get(0, 0, 1, read("a", 1)), put(1, 2, 3, "a", 0, OK(1))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("catches a version that skips", () => {
    expect(checkLinearizable([put(0, 0, 1, "a", 0, OK(2))])).toMatchObject({ result: "illegal" });
  });

  it("catches ErrNoKey for a key that exists, and ErrVersion for one that does not", () => {
    expect(checkLinearizable([put(0, 0, 1, "a", 0, OK(1)), get(0, 2, 3, NoKey)])).toMatchObject({ result: "illegal" });
    expect(checkLinearizable([put(0, 0, 1, "a", 2, Version)])).toMatchObject({ result: "illegal" });
    expect(checkLinearizable([put(0, 0, 1, "a", 0, NoKey)])).toMatchObject({ result: "illegal" });
  });

  it("keeps keys apart: a read of one key is not explained by a write to another", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1), "x"), get(1, 2, 3, read("a", 1), "y")];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal", key: "y" });
  });
});

describe("checkLinearizable and one client's own order", () => {
  it("catches a client that reads its key as absent right after its own put returned OK", () => {
    const h = [put(0, 0, 5, "a", 0, OK(1)), get(0, 6, 7, NoKey)];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("catches a client that sees its own put before calling it", () => {
    const h = [get(0, 0, 5, read("b", 1)), put(0, 6, 7, "b", 0, OK(1))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("still lets two clients' touching ops run concurrently", () => {
    const h = [put(0, 0, 5, "a", 0, OK(1)), get(1, 5, 6, NoKey)];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("lets a client's put with no reply land after the client's next op", () => {
    const h = [put(0, 0, undefined, "a", 0), get(0, 5, 6, NoKey), get(1, 10, 11, read("a", 1))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("throws InvalidArgumentError, naming the client and times, when a client's op returns as its next is called", () => {
    // Not linearizable: each client's get follows its own put, so both puts precede both gets.
    // Split by key, touching times would read as concurrent and the history would pass.
    const h = [put(0, 0, 5, "a", 0, OK(1), "x"), get(0, 5, 6, NoKey, "y"), put(1, 0, 5, "b", 0, OK(1), "y"), get(1, 5, 6, NoKey, "x")];
    expect(() => checkLinearizable(h)).toThrow(InvalidArgumentError);
    expect(() => checkLinearizable(h)).toThrow(/client 0's ops overlap: one returned at 5, its next was called at 5/);
    // The same history recorded with a clock that moves between them is checked, and caught.
    const strict = [put(0, 0, 5, "a", 0, OK(1), "x"), get(0, 6, 7, NoKey, "y"), put(1, 0, 5, "b", 0, OK(1), "y"), get(1, 6, 7, NoKey, "x")];
    expect(checkLinearizable(strict)).toMatchObject({ result: "illegal" });
  });

  it("throws when a client's ops overlap on one key, or are called at the same time", () => {
    expect(() => checkLinearizable([put(0, 0, 5, "a", 0, OK(1)), get(0, 3, 6, read("a", 1))])).toThrow(/client 0's ops overlap/);
    expect(() => checkLinearizable([get(3, 2, 4, NoKey, "x"), get(3, 2, 4, NoKey, "y")])).toThrow(/client 3's ops overlap/);
  });

  it("puts no constraint after an op with no reply: the client's next call may come at any time", () => {
    const h = [put(0, 5, undefined, "a", 0), get(0, 5, 6, NoKey), get(0, 7, 8, read("a", 1))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });
});

describe("checkLinearizable with ErrMaybe", () => {
  it("accepts an ErrMaybe put that created the key, seen by a later read at version 1", () => {
    const h = [get(1, 0, 1, NoKey), put(0, 2, 5, "a", 0, Maybe), get(1, 6, 7, read("a", 1))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("accepts an ErrMaybe create that did not apply because another client created the key first", () => {
    const h = [get(1, 0, 1, NoKey), put(0, 2, 5, "a", 0, Maybe), put(1, 3, 4, "b", 0, OK(1)), get(1, 6, 7, read("b", 1))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("rejects an ErrMaybe create that did not apply though the key was absent for its whole span", () => {
    const h = [get(1, 0, 1, NoKey), put(0, 2, 5, "a", 0, Maybe), get(1, 6, 7, NoKey)];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("accepts an ErrMaybe put that applied, seen by a later read", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, 5, "b", 1, Maybe), get(1, 6, 7, read("b", 2))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("accepts an ErrMaybe put that did not apply because another write came first", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, 5, "b", 1, Maybe), put(1, 2, 3, "c", 1, OK(2)), get(1, 6, 7, read("c", 2))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("rejects an ErrMaybe put that matched the version for its whole span and yet did not apply", () => {
    // Nothing else wrote while it ran, so at its moment the version matched and it applied.
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, 5, "b", 1, Maybe), get(1, 6, 7, read("a", 1))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("rejects an ErrMaybe put whose effect is seen after its span but never during or before", () => {
    // The write lands after the put returned: an ErrMaybe put happened within its span.
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, 3, "b", 1, Maybe), get(1, 4, 5, read("a", 1)), get(1, 6, 7, read("b", 2))];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });
});

describe("checkLinearizable with no reply", () => {
  it("accepts a put with no reply whose effect shows up much later", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, undefined, "b", 1), get(1, 10, 11, read("a", 1)), get(1, 50, 51, read("b", 2))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("accepts a put with no reply that never took effect", () => {
    const h = [put(0, 0, 1, "a", 0, OK(1)), put(0, 2, undefined, "b", 1), get(1, 50, 51, read("a", 1))];
    expect(checkLinearizable(h)).toEqual({ result: "ok" });
  });

  it("rejects a put with no reply seen before its call", () => {
    const h = [get(1, 0, 1, read("b", 1)), put(0, 2, undefined, "b", 0)];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("rejects a put with no reply seen, then unseen", () => {
    const h = [put(0, 0, undefined, "b", 0), get(1, 5, 6, read("b", 1)), get(1, 7, 8, NoKey)];
    expect(checkLinearizable(h)).toMatchObject({ result: "illegal" });
  });

  it("ignores a get with no reply", () => {
    expect(checkLinearizable([get(0, 0, undefined), put(1, 1, 2, "a", 0, OK(1))])).toEqual({ result: "ok" });
  });
});

describe("checkLinearizable input checks and budget", () => {
  it("throws TypeError for an event that returns before its call, or has an output without a return", () => {
    expect(() => checkLinearizable([get(0, 5, 4, NoKey)])).toThrow(TypeError);
    expect(() => checkLinearizable([{ client: 0, op: { kind: "get", key: "k" }, call: 0, output: NoKey }])).toThrow(TypeError);
  });

  it("answers unknown, neither ok nor illegal, when the budget runs out on a hard linearizable history", () => {
    // 40 concurrent puts of unknown outcome on one key, two at each version 1…20. It is
    // linearizable: c20 writes at version 1, c1 at 2, c2 at 3, …, c19 at 20, the rest miss, and
    // the read sees c19's write. The search, trying ops in call order, first takes c19 as a miss
    // and must exhaust a vast number of orders before it finds that one (seconds, not 50 ms).
    const h: Event[] = [put(0, 0, 1, "a", 0, OK(1))];
    for (let c = 1; c <= 40; c++) h.push(put(c, 2, 100, `v${c}`, (c % 20) + 1, Maybe));
    h.push(get(0, 101, 102, read("v19", 21)));
    expect(checkLinearizable(h, { timeoutMs: 50 })).toEqual({ result: "unknown" });
  });
});

type Model = Map<string, { value: string; version: number; modRevision: number; createRevision: number }>;
const opArb = fc.oneof(
  fc.record({ kind: fc.constant("get" as const), key: fc.constantFrom("a", "b", "c") }),
  fc.record({
    kind: fc.constant("put" as const),
    key: fc.constantFrom("a", "b", "c"),
    value: fc.constantFrom("x", "y", "z"),
    version: fc.nat(3),
  }),
);

/** Runs ops one at a time against a model of contract §2; each op's span is its own slot. */
function sequentialHistory(ops: Op[], clients: number): Event[] {
  const model: Model = new Map();
  let revision = 0;
  return ops.map((op, i) => {
    const cur = model.get(op.key);
    let output: GetResult | PutResult;
    if (op.kind === "get") output = cur ? { err: "OK", ...cur } : NoKey;
    else if ((cur?.version ?? 0) === op.version) {
      revision++;
      model.set(op.key, {
        value: op.value,
        version: op.version + 1,
        modRevision: revision,
        createRevision: cur?.createRevision ?? revision,
      });
      output = OK(op.version + 1, revision);
    } else output = cur ? Version : NoKey;
    return { client: i % clients, op, call: 2 * i, return: 2 * i + 1, output };
  });
}

describe("checkLinearizable properties", () => {
  it("accepts every history of a sequential execution against the model", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), fc.integer({ min: 1, max: 5 }), (ops, clients) => {
        expect(checkLinearizable(sequentialHistory(ops, clients))).toEqual({ result: "ok" });
      }),
      { numRuns: 300 },
    );
  });

  it("rejects that history once one read's value is replaced by a value never written", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), fc.nat(), (ops, pick) => {
        const h = sequentialHistory(ops, 3);
        const reads = h.filter((e) => e.op.kind === "get" && e.output?.err === "OK");
        fc.pre(reads.length > 0);
        const victim = reads[pick % reads.length] as Event;
        victim.output = { ...(victim.output as Extract<GetResult, { err: "OK" }>), value: "never written" };
        expect(checkLinearizable(h)).toMatchObject({ result: "illegal", key: victim.op.key });
      }),
      { numRuns: 300 },
    );
  });
});

/**
 * Tries every order of a small history: the definition of linearizability, executed, across all
 * keys at once. Real-time order only: the histories keep each client's ops strictly apart.
 */
function bruteForce(history: Event[]): boolean {
  const ops = history.filter((e) => !(e.op.kind === "get" && e.output === undefined));
  const end = (e: Event) => e.return ?? Number.POSITIVE_INFINITY;
  const used = new Array<boolean>(ops.length).fill(false);
  const states = new Map<string, { value: string; version: number }>();
  const tryFrom = (placed: number): boolean => {
    if (placed === ops.length) return true;
    for (let i = 0; i < ops.length; i++) {
      if (used[i]) continue;
      const e = ops[i] as Event;
      if (ops.some((o, j) => !used[j] && j !== i && end(o) < e.call)) continue;
      const cur = states.get(e.op.key);
      const version = cur?.version ?? 0;
      let write: { value: string; version: number } | undefined;
      const out = e.output;
      if (e.op.kind === "get") {
        const fits =
          out?.err === "ErrNoKey"
            ? cur === undefined
            : out?.err === "OK" && "value" in out && cur?.value === out.value && version === out.version;
        if (!fits) continue;
      } else {
        const matches = version === e.op.version;
        if (out === undefined || out.err === "ErrMaybe") write = matches ? { value: e.op.value, version: version + 1 } : undefined;
        else if (out.err === "OK") {
          if (!(matches && out.version === version + 1)) continue;
          write = { value: e.op.value, version: version + 1 };
        } else if (out.err === "ErrVersion") {
          if (cur === undefined || matches) continue;
        } else if (!(cur === undefined && e.op.version > 0)) continue;
      }
      used[i] = true;
      if (write) states.set(e.op.key, write);
      const ok = tryFrom(placed + 1);
      used[i] = false;
      if (cur === undefined) states.delete(e.op.key);
      else states.set(e.op.key, cur);
      if (ok) return true;
    }
    return false;
  };
  return tryFrom(0);
}

describe("checkLinearizable against brute force", () => {
  const outputArb = fc.oneof(
    fc.constant(undefined),
    fc.constant(NoKey),
    fc.constant(Version),
    fc.constant(Maybe),
    fc.integer({ min: 1, max: 3 }).map(OK),
  );
  const stepArb = fc.record({
    kind: fc.constantFrom("get", "put"),
    key: fc.constantFrom("a", "b"),
    value: fc.constantFrom("x", "y"),
    version: fc.nat(2),
    gap: fc.nat(3), // 0 after no reply: called the instant the client gave up
    length: fc.nat(6),
    output: outputArb,
    readValue: fc.constantFrom("x", "y"),
    readVersion: fc.integer({ min: 1, max: 3 }),
    readAbsent: fc.boolean(),
    lost: fc.boolean(),
  });
  /**
   * Up to three clients, each one op at a time (an answered op returns strictly before the
   * client's next call), with touching and overlapping spans across clients.
   */
  const historyArb = fc.array(fc.tuple(fc.nat(4), fc.array(stepArb, { maxLength: 3 })), { minLength: 1, maxLength: 3 }).map((clients) => {
    const history: Event[] = [];
    clients.forEach(([start, steps], client) => {
      let t = start;
      for (const r of steps) {
        const call = t + r.gap;
        const isLost = r.lost && r.output === undefined;
        const ret = isLost ? undefined : call + r.length;
        t = isLost ? call + r.length : call + r.length + 1; // a client that got no reply moves on once it gives up
        if (r.kind === "get") history.push(get(client, call, ret, r.readAbsent ? NoKey : read(r.readValue, r.readVersion), r.key));
        else history.push(put(client, call, ret, r.value, r.version, isLost ? undefined : (r.output ?? OK(r.version + 1)), r.key));
      }
    });
    return history;
  });

  it("agrees with trying every order, on small random histories", () => {
    const verdicts = { ok: 0, illegal: 0 };
    fc.assert(
      fc.property(historyArb, (history) => {
        fc.pre(history.length > 0);
        const expected = bruteForce(history) ? "ok" : "illegal";
        verdicts[expected]++;
        expect(checkLinearizable(history).result).toBe(expected);
      }),
      { numRuns: 4000 },
    );
    // The property saw both verdicts, many times each.
    expect(verdicts.ok).toBeGreaterThan(300);
    expect(verdicts.illegal).toBeGreaterThan(300);
  });
});
