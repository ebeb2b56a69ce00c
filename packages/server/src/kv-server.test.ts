import { hasCode, MAX_VERSION } from "@kv/rpc";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { KVServer, type ServerPutResult } from "./kv-server";
import { MemoryStore } from "./memory-store";

const newServer = () => new KVServer(new MemoryStore());

describe("KVServer.get", () => {
  it("answers ErrNoKey for a key never written", async () => {
    expect(await newServer().get("k")).toEqual({ err: "ErrNoKey" });
  });

  it("answers the value and version of a present key", async () => {
    const kv = newServer();
    await kv.put("k", "v1", 0);
    await kv.put("k", "v2", 1);
    expect(await kv.get("k")).toEqual({ err: "OK", value: "v2", version: 2, modRevision: 2, createRevision: 1 });
  });
});

describe("KVServer.get long-poll", () => {
  it("answers every waiter woken by one write from one store read, and never from a read older than the write", async () => {
    let reads = 0;
    const store = new MemoryStore();
    const counting = Object.assign(Object.create(store) as MemoryStore, {
      get: (key: string) => (reads++, store.get(key)),
      watch: (key: string, onChange: () => void) => store.watch(key, onChange),
      putIfVersion: store.putIfVersion.bind(store),
    });
    const kv = new KVServer(counting);
    await kv.put("k", "v1", 0);
    const waiting = Array.from({ length: 100 }, () => kv.get("k", { wait: { version: 1, ms: 60_000 } }));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const readsWhileWaiting = reads;
    expect(readsWhileWaiting).toBeLessThanOrEqual(100); // one each on arrival at most
    const stale = kv.get("k"); // a plain read started before the write: no waiter may take its answer
    await kv.put("k", "v2", 1);
    expect(await stale).toEqual({ err: "OK", value: "v1", version: 1, modRevision: 1, createRevision: 1 });
    const answers = await Promise.all(waiting);
    expect(answers.every((a) => a.err === "OK" && a.value === "v2" && a.version === 2)).toBe(true);
    expect(reads - readsWhileWaiting).toBeLessThanOrEqual(3); // the plain read, and one shared by the 100
  });
});

describe("KVServer.put (contract §2)", () => {
  it("creates an absent key at version 1 when version is 0", async () => {
    const kv = newServer();
    expect(await kv.put("k", "v", 0)).toEqual({ err: "OK", version: 1, revision: 1 });
    expect(await kv.get("k")).toEqual({ err: "OK", value: "v", version: 1, modRevision: 1, createRevision: 1 });
  });

  it("answers ErrNoKey for an absent key and a version above 0, and creates nothing", async () => {
    const kv = newServer();
    expect(await kv.put("k", "v", 1)).toEqual({ err: "ErrNoKey" });
    expect(await kv.put("k", "v", 7)).toEqual({ err: "ErrNoKey" });
    expect(await kv.get("k")).toEqual({ err: "ErrNoKey" });
  });

  it("writes a present key at its current version and moves the version on by one", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0);
    expect(await kv.put("k", "b", 1)).toEqual({ err: "OK", version: 2, revision: 2 });
    expect(await kv.get("k")).toEqual({ err: "OK", value: "b", version: 2, modRevision: 2, createRevision: 1 });
  });

  it("answers ErrVersion for a present key at another version, and changes nothing", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0);
    await kv.put("k", "b", 1);
    for (const stale of [0, 1, 3, 100]) expect(await kv.put("k", "x", stale)).toEqual({ err: "ErrVersion" });
    expect(await kv.get("k")).toEqual({ err: "OK", value: "b", version: 2, modRevision: 2, createRevision: 1 });
  });

  it("accepts the empty string as a value", async () => {
    const kv = newServer();
    await kv.put("k", "", 0);
    expect(await kv.get("k")).toEqual({ err: "OK", value: "", version: 1, modRevision: 1, createRevision: 1 });
  });

  it("treats keys named like Object.prototype members as ordinary keys", async () => {
    const kv = newServer();
    for (const [i, key] of ["__proto__", "constructor", "toString", "hasOwnProperty"].entries()) {
      expect(await kv.get(key)).toEqual({ err: "ErrNoKey" });
      expect(await kv.put(key, key, 0)).toEqual({ err: "OK", version: 1, revision: i + 1 });
      expect(await kv.get(key)).toEqual({ err: "OK", value: key, version: 1, modRevision: i + 1, createRevision: i + 1 });
    }
  });

  it("lets exactly one of many concurrent puts on the same version win", async () => {
    const kv = newServer();
    await kv.put("k", "start", 0);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => kv.put("k", `w${i}`, 1)));
    expect(results.filter((r) => r.err === "OK")).toEqual([{ err: "OK", version: 2, revision: 2 }]);
    expect(results.filter((r) => r.err === "ErrVersion")).toHaveLength(49);
  });
});

describe("KVServer.put with put ids", () => {
  it("answers a retry of the put that made the current version OK, and changes nothing", async () => {
    const kv = newServer();
    expect(await kv.put("k", "a", 0, "id-1")).toEqual({ err: "OK", version: 1, revision: 1 });
    expect(await kv.put("k", "a", 0, "id-1")).toEqual({ err: "OK", version: 1, revision: 1 });
    expect(await kv.put("k", "b", 1, "id-2")).toEqual({ err: "OK", version: 2, revision: 2 });
    expect(await kv.put("k", "b", 1, "id-2")).toEqual({ err: "OK", version: 2, revision: 2 });
    expect(await kv.get("k")).toEqual({ err: "OK", value: "b", version: 2, modRevision: 2, createRevision: 1 });
  });

  it("answers a retry the recorded reply even once another write came in between", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0, "id-1");
    await kv.put("k", "b", 1, "id-2");
    expect(await kv.put("k", "a", 0, "id-1", { isRetry: true })).toEqual({ err: "OK", version: 1, revision: 1 });
    expect(await kv.get("k")).toEqual({ err: "OK", value: "b", version: 2, modRevision: 2, createRevision: 1 });
  });

  it("answers a retry refused once the same refusal for good, even when the key comes to its version", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0, "id-1");
    expect(await kv.put("k", "x", 2, "id-x", { isRetry: true })).toEqual({ err: "ErrVersion" });
    await kv.put("k", "b", 1, "id-2");
    expect(await kv.put("k", "x", 2, "id-x")).toEqual({ err: "ErrVersion" }); // its first try, arriving late
    expect(await kv.get("k")).toEqual({ err: "OK", value: "b", version: 2, modRevision: 2, createRevision: 1 });
  });

  it("refuses an id recorded for another write with InvalidArgumentError", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0);
    await kv.put("k", "b", 1, "id-2");
    await expect(kv.put("k", "b", 0, "id-2")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
  });
});

describe("KVServer.put with put ids, without a record (expired at once)", () => {
  const withoutRecords = () => new KVServer(new MemoryStore({ retentionMs: 0 }));

  it("answers OK to a retry whose put made the current version", async () => {
    const kv = withoutRecords();
    await kv.put("k", "a", 0, "id-1");
    expect(await kv.put("k", "a", 0, "id-1", { isRetry: true })).toEqual({ err: "OK", version: 1, revision: 1 });
  });

  it("answers ErrVersion to a retry once another write came in between", async () => {
    const kv = withoutRecords();
    await kv.put("k", "a", 0, "id-1");
    await kv.put("k", "b", 1, "id-2");
    expect(await kv.put("k", "a", 0, "id-1", { isRetry: true })).toEqual({ err: "ErrVersion" });
  });

  it("matches the id only at the version right below the current one", async () => {
    const kv = withoutRecords();
    await kv.put("k", "a", 0);
    await kv.put("k", "b", 1, "id-2");
    expect(await kv.put("k", "b", 0, "id-2")).toEqual({ err: "ErrVersion" });
  });

  it("answers ErrVersion to a put with a different id or none at the stale version", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0, "id-1");
    expect(await kv.put("k", "a", 0, "id-other")).toEqual({ err: "ErrVersion" });
    expect(await kv.put("k", "a", 0)).toEqual({ err: "ErrVersion" });
  });

  it("does not mistake a put without an id for a retry of one without an id", async () => {
    const kv = newServer();
    await kv.put("k", "a", 0);
    expect(await kv.put("k", "a", 0)).toEqual({ err: "ErrVersion" });
  });
});

describe("KVServer argument checks", () => {
  it("rejects versions that are negative, fractional or beyond 2^53 − 1 with InvalidArgumentError", async () => {
    const kv = newServer();
    for (const version of [-1, 0.5, Number.NaN, Number.POSITIVE_INFINITY, MAX_VERSION + 1]) {
      const err = await kv.put("k", "v", version).catch((e: unknown) => e);
      expect(hasCode(err, "ERR_INVALID_ARG_VALUE"), String(version)).toBe(true);
    }
    expect(await kv.get("k")).toEqual({ err: "ErrNoKey" });
  });

  it("rejects an empty key and bad put ids with InvalidArgumentError", async () => {
    const kv = newServer();
    await expect(kv.get("")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(kv.put("", "v", 0)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(kv.put("k", "v", 0, "")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(kv.put("k", "v", 0, "x".repeat(65))).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    expect(await kv.put("k", "v", 0, "x".repeat(64))).toEqual({ err: "OK", version: 1, revision: 1 });
    // Characters are code points: 64 emoji (128 UTF-16 units) are 64 characters.
    expect(await kv.put("e", "v", 0, "🔑".repeat(64))).toEqual({ err: "OK", version: 1, revision: 2 });
    await expect(kv.put("e", "v", 1, "🔑".repeat(65))).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
  });

  it("accepts the largest version, which never matches a key: ErrNoKey when absent, ErrVersion when present", async () => {
    const kv = newServer();
    expect(await kv.put("k", "v", MAX_VERSION)).toEqual({ err: "ErrNoKey" });
    await kv.put("k", "v", 0);
    expect(await kv.put("k", "v", MAX_VERSION)).toEqual({ err: "ErrVersion" });
  });
});

type Entry = { value: string; version: number; modRevision: number; createRevision: number; id: string | undefined };
/** The keys, and the store revision: the number of writes applied. */
type Model = { entries: Map<string, Entry>; revision: number };
type Recorded = { key: string; version: number; reply: ServerPutResult };

/** The contract §2 table and its completion records, written as plainly as they read; "reused": an id recorded for another write. */
function modelPut(
  model: Model,
  records: Map<string, Recorded>,
  o: { key: string; value: string; version: number; id?: string | undefined; isRetry: boolean },
): ServerPutResult | "reused" {
  const record = o.id === undefined ? undefined : records.get(o.id);
  if (record !== undefined) return record.key === o.key && record.version === o.version ? record.reply : "reused";
  const reply = tablePut(model, o);
  if (o.id !== undefined && (reply.err === "OK" || o.isRetry)) records.set(o.id, { key: o.key, version: o.version, reply });
  return reply;
}

function tablePut(model: Model, o: { key: string; value: string; version: number; id?: string | undefined }): ServerPutResult {
  const current = model.entries.get(o.key);
  if (current === undefined && o.version !== 0) return { err: "ErrNoKey" };
  if (o.version === (current?.version ?? 0)) {
    const revision = ++model.revision;
    const createRevision = current?.createRevision ?? revision;
    model.entries.set(o.key, { value: o.value, version: o.version + 1, modRevision: revision, createRevision, id: o.id });
    return { err: "OK", version: o.version + 1, revision };
  }
  if (o.id !== undefined && o.id === current?.id && o.version + 1 === current.version) {
    return { err: "OK", version: current.version, revision: current.modRevision };
  }
  return { err: "ErrVersion" };
}

describe("KVServer against a model", () => {
  it("agrees with the contract's table and its completion records on every sequence of gets and puts", async () => {
    const op = fc.record({
      key: fc.constantFrom("a", "b", "__proto__"),
      value: fc.string({ maxLength: 4 }),
      version: fc.nat(4),
      id: fc.option(fc.constantFrom("p", "q", "r"), { nil: undefined }),
      isRetry: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
        const kv = newServer();
        const model: Model = { entries: new Map(), revision: 0 };
        const records = new Map<string, Recorded>();
        for (const o of ops) {
          const expected = modelPut(model, records, o);
          const put = kv.put(o.key, o.value, o.version, o.id, { isRetry: o.isRetry });
          if (expected === "reused") await expect(put).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
          else expect(await put).toEqual(expected);
          const m = model.entries.get(o.key);
          const { value, version, modRevision, createRevision } = m ?? {};
          expect(await kv.get(o.key)).toEqual(m ? { err: "OK", value, version, modRevision, createRevision } : { err: "ErrNoKey" });
        }
      }),
      { numRuns: 300 },
    );
  });

  it("agrees with the contract's table alone when records expire at once", async () => {
    const op = fc.record({
      key: fc.constantFrom("a", "b"),
      value: fc.string({ maxLength: 4 }),
      version: fc.nat(4),
      id: fc.option(fc.constantFrom("p", "q", "r"), { nil: undefined }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
        const kv = new KVServer(new MemoryStore({ retentionMs: 0 }));
        const model: Model = { entries: new Map(), revision: 0 };
        for (const o of ops) expect(await kv.put(o.key, o.value, o.version, o.id, { isRetry: true })).toEqual(tablePut(model, o));
      }),
      { numRuns: 300 },
    );
  });
});
