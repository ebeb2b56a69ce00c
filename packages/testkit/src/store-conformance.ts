import type { GetResult, PutResult } from "@kv/rpc";
import { type CompletionRecordOptions, KVServer, type PutDecision, refusalOf, type Store, type StoredEntry } from "@kv/server";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { recordHistory, assertLinearizable } from "./record-history";
import { testSeed } from "./random";

/** `describeStoreConformance`'s options. */
export interface StoreConformanceOptions {
  /** For a durable store: opens `closed` again, over the same data. Adds the close-and-reopen tests. */
  reopen?: (closed: Store) => Promise<Store>;
  /** The largest value the suite writes, in UTF-8 bytes (default 1 MiB, the server's default limit). */
  maxValueBytes?: number;
  /** A retention the store keeps to, for the tests of expiry (default 300 ms). */
  shortRetentionMs?: number;
}

/** The odd keys every store must keep apart and give back as they were. */
const ODD_KEYS = [
  "a/b",
  "%",
  "%2F",
  " ",
  "..",
  ".",
  "ключ",
  "🔑",
  "__proto__",
  "constructor",
  "\u0000nul",
  "tab\tnew\nline",
  "x".repeat(4096),
  `${"y".repeat(2000)}1`, // two long keys that share their first 2 000 bytes
  `${"y".repeat(2000)}2`,
];

// What the suite expects where only the revision's existence matters; the revisions' own test
// checks their values.
const revision = () => expect.any(Number);
const applied = (version: number) => ({ ok: true, version, revision: revision() });
const answered = (version: number) => ({ err: "OK", version, revision: revision() });
const got = (value: string, version: number) => ({ err: "OK", value, version, modRevision: revision(), createRevision: revision() });
const entry = (value: string, version: number, putId?: string) => ({
  value,
  version,
  modRevision: revision(),
  createRevision: revision(),
  ...(putId !== undefined && { putId }),
});

/**
 * A vitest suite every `Store` must pass: each row of contract §2 through `KVServer` and on the
 * primitive itself, put ids kept with the value, exactly one winner among concurrent
 * conditional puts, many keys, values at the limit, odd keys, closing, and — given `reopen` —
 * everything still there after a close and reopen. `makeStore` is called once per test and
 * must return an empty store; the suite closes what it opens.
 */
export function describeStoreConformance(
  name: string,
  makeStore: (records?: CompletionRecordOptions) => Promise<Store>,
  options: StoreConformanceOptions = {},
): void {
  const maxValueBytes = options.maxValueBytes ?? 1024 * 1024;
  const opened: Store[] = [];
  const fresh = async (records?: CompletionRecordOptions) => {
    const store = await makeStore(records);
    opened.push(store);
    return store;
  };
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
  });

  describe(`${name} conforms to contract §2`, () => {
    it("answers every row of the contract's table through KVServer", async () => {
      const kv = new KVServer(await fresh());
      expect(await kv.get("k")).toEqual({ err: "ErrNoKey" });
      expect(await kv.put("k", "v1", 3)).toEqual({ err: "ErrNoKey" });
      expect(await kv.get("k")).toEqual({ err: "ErrNoKey" });
      expect(await kv.put("k", "v1", 0)).toEqual(answered(1));
      expect(await kv.get("k")).toEqual(got("v1", 1));
      expect(await kv.put("k", "v2", 1)).toEqual(answered(2));
      expect(await kv.put("k", "v3", 1)).toEqual({ err: "ErrVersion" });
      expect(await kv.put("k", "v3", 0)).toEqual({ err: "ErrVersion" });
      expect(await kv.put("k", "v3", 7)).toEqual({ err: "ErrVersion" });
      expect(await kv.get("k")).toEqual(got("v2", 2));
    });

    it("raises the store revision with every write; a key carries the revisions that made and created it", async () => {
      const store = await fresh();
      const kv = new KVServer(store);
      const first = await kv.put("rev/a", "a1", 0, "rev-1");
      if (first.err !== "OK") throw new Error(`put: ${first.err}`);
      expect(await kv.get("rev/a")).toEqual({
        err: "OK",
        value: "a1",
        version: 1,
        modRevision: first.revision,
        createRevision: first.revision,
      });
      const second = await kv.put("rev/a", "a2", 1);
      const other = await kv.put("rev/b", "b1", 0);
      if (second.err !== "OK" || other.err !== "OK") throw new Error("put refused");
      expect(second.revision).toBeGreaterThan(first.revision);
      expect(other.revision).toBeGreaterThan(second.revision);
      expect(await kv.get("rev/a")).toEqual({
        err: "OK",
        value: "a2",
        version: 2,
        modRevision: second.revision,
        createRevision: first.revision,
      });
      expect(await kv.get("rev/b")).toEqual({
        err: "OK",
        value: "b1",
        version: 1,
        modRevision: other.revision,
        createRevision: other.revision,
      });
      // A refused put changes no revision; a retry answered from its record answers the revision it made then.
      expect(await kv.put("rev/a", "no", 1)).toEqual({ err: "ErrVersion" });
      expect(await kv.get("rev/a")).toMatchObject({ modRevision: second.revision });
      const expected = store.completionRecords === undefined ? { err: "ErrVersion" } : first;
      expect(await kv.put("rev/a", "a1", 0, "rev-1", { isRetry: true })).toEqual(expected);
      // Concurrent writes to many keys: each its own revision, and the key's modRevision is it.
      const writes = await Promise.all(Array.from({ length: 50 }, (_, i) => kv.put(`rev/many/${i}`, "v", 0)));
      const revisions = writes.map((w) => (w.err === "OK" ? w.revision : Number.NaN));
      expect(new Set(revisions).size).toBe(50);
      expect(Math.min(...revisions)).toBeGreaterThan(other.revision);
      for (let i = 0; i < 50; i++)
        expect(await kv.get(`rev/many/${i}`)).toMatchObject({ modRevision: revisions[i], createRevision: revisions[i] });
    });

    it("deletes a present key, unconditionally or at its version; a put at 0 creates it again at version 1, with a newer revision", async () => {
      const kv = new KVServer(await fresh());
      const made = await kv.put("del/k", "v1", 0);
      if (made.err !== "OK") throw new Error(`put: ${made.err}`);
      expect(await kv.delete("del/k", 2)).toEqual({ err: "ErrVersion" });
      expect(await kv.delete("del/k", 0)).toEqual({ err: "ErrVersion" });
      expect(await kv.get("del/k")).toEqual(got("v1", 1));
      const deleted = await kv.delete("del/k", 1);
      if (deleted.err !== "OK") throw new Error(`delete: ${deleted.err}`);
      expect(deleted.revision).toBeGreaterThan(made.revision);
      expect(await kv.get("del/k")).toEqual({ err: "ErrNoKey" });
      expect(await kv.delete("del/k")).toEqual({ err: "ErrNoKey" });
      expect(await kv.delete("del/k", 1)).toEqual({ err: "ErrNoKey" });
      expect(await kv.put("del/k", "v2", 1)).toEqual({ err: "ErrNoKey" });
      const again = await kv.put("del/k", "v2", 0);
      if (again.err !== "OK") throw new Error(`put: ${again.err}`);
      expect(again).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
      expect(again.revision).toBeGreaterThan(deleted.revision);
      expect(await kv.get("del/k")).toEqual({
        err: "OK",
        value: "v2",
        version: 1,
        modRevision: again.revision,
        createRevision: again.revision,
      });
      const unconditional = await kv.delete("del/k");
      expect(unconditional).toEqual({ err: "OK", revision: expect.any(Number) });
      expect(await kv.get("del/k")).toEqual({ err: "ErrNoKey" });
      // Other keys are left alone.
      await kv.put("del/other", "x", 0);
      expect(await kv.delete("del/absent")).toEqual({ err: "ErrNoKey" });
      expect(await kv.get("del/other")).toEqual(got("x", 1));
    });

    it("wakes a long-poll read on a key when the key is deleted", async () => {
      const store = await fresh();
      const kv = new KVServer(store);
      await kv.put("del/lp", "v", 0);
      const waiting = kv.get("del/lp", { wait: { version: 1, ms: 60_000 } });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await kv.delete("del/lp");
      expect(await waiting).toEqual({ err: "ErrNoKey" });
    });

    it("recognises a retried put by its id while its completion record lasts, even after other writes", async () => {
      const store = await fresh();
      const kv = new KVServer(store);
      expect(await kv.put("k", "mine", 0, "put-1")).toEqual(answered(1));
      expect(await kv.put("k", "mine", 0, "put-1", { isRetry: true })).toEqual(answered(1)); // the retry
      expect(await kv.get("k")).toEqual(got("mine", 1));
      expect(await kv.put("k", "other", 0, "put-2")).toEqual({ err: "ErrVersion" });
      expect(await kv.put("k", "theirs", 1, "put-3")).toEqual(answered(2));
      // Another write came in between: a store with records still knows; one without, no longer.
      const late = store.completionRecords === undefined ? { err: "ErrVersion" } : answered(1);
      expect(await kv.put("k", "mine", 0, "put-1", { isRetry: true })).toEqual(late);
      expect(await kv.get("k")).toEqual(got("theirs", 2));
    });

    it("keeps the put id with the value in the same write, and drops it when a put has none", async () => {
      const store = await fresh();
      expect(await store.putIfVersion("k", "v", 0, "id-1")).toEqual(applied(1));
      expect(await store.get("k")).toEqual(entry("v", 1, "id-1"));
      expect(await store.putIfVersion("k", "w", 0, "id-2")).toEqual({ ok: false, current: entry("v", 1, "id-1") });
      expect(await store.putIfVersion("k", "w", 1, undefined)).toEqual(applied(2));
      expect(await store.get("k")).toEqual(entry("w", 2));
      expect(await store.putIfVersion("absent", "w", 4, undefined)).toEqual({ ok: false, current: undefined });
    });

    it("agrees with a Map model on every sequence of puts, ids and retries", async () => {
      const store = await fresh();
      const keepsRecords = store.completionRecords !== undefined;
      const records = new Map<string, { key: string; version: number; decision: PutDecision }>(); // ids live across runs
      let round = 0;
      let lastRevision = 0;
      const op = fc.record({
        key: fc.constantFrom("a", "b"),
        value: fc.string(),
        version: fc.nat(3),
        id: fc.option(fc.constantFrom("i1", "i2", "i3")),
        isRetry: fc.boolean(),
      });
      await fc.assert(
        fc.asyncProperty(fc.array(op, { maxLength: 12 }), async (ops) => {
          const prefix = `run${round++}:`; // one store for every run: each run has keys of its own
          const model = new Map<string, StoredEntry>();
          for (const o of ops) {
            const key = prefix + o.key;
            const id = o.id === null ? undefined : `${o.id}`;
            const put = () => store.putIfVersion(key, o.value, o.version, id, { isRetry: o.isRetry });
            const record = id === undefined || !keepsRecords ? undefined : records.get(id);
            if (record !== undefined) {
              if (record.key === key && record.version === o.version) expect(await put()).toEqual({ recorded: record.decision });
              else await expect(put()).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
              continue;
            }
            const now = model.get(key);
            const isApplied = (now?.version ?? 0) === o.version;
            const r = await put();
            expect(r).toEqual(isApplied ? applied(o.version + 1) : { ok: false, current: now });
            if (r.ok) {
              expect(r.revision).toBeGreaterThan(lastRevision); // every write raises it
              lastRevision = r.revision;
              const made = {
                value: o.value,
                version: r.version,
                modRevision: r.revision,
                createRevision: now?.createRevision ?? r.revision,
              };
              model.set(key, id === undefined ? made : { ...made, putId: id });
              if (id !== undefined)
                records.set(id, { key, version: o.version, decision: { err: "OK", version: r.version, revision: r.revision } });
            } else if (id !== undefined && o.isRetry) {
              records.set(id, { key, version: o.version, decision: refusalOf(now, o.version, id) });
            }
          }
          for (const [key, entry] of model) expect(await store.get(key)).toEqual(entry);
        }),
        { numRuns: 40 },
      );
    });

    it("lets exactly one of many concurrent conditional puts win each version", async () => {
      const store = await fresh();
      for (let version = 0; version < 5; version++) {
        const results = await Promise.all(
          Array.from({ length: 40 }, (_, i) => store.putIfVersion("hot", `v${version}.${i}`, version, `id${version}.${i}`)),
        );
        const winners = results.filter((r) => r.ok);
        expect(winners).toEqual([applied(version + 1)]);
        const winner = results.findIndex((r) => r.ok);
        for (const r of results) if (r.ok === false) expect(r.current?.version).toBe(version + 1);
        expect(await store.get("hot")).toEqual(entry(`v${version}.${winner}`, version + 1, `id${version}.${winner}`));
      }
    });

    it("stays linearizable under concurrent gets and puts on a few keys", async () => {
      const seed = testSeed();
      const kv = new KVServer(await fresh());
      const history = await recordHistory({
        clients: 8,
        opsPerClient: 40,
        keys: ["x", "y", "z"],
        seed,
        now: () => performance.now(),
        execute: (_c, op): Promise<GetResult | PutResult> => (op.kind === "get" ? kv.get(op.key) : kv.put(op.key, op.value, op.version)),
      });
      assertLinearizable(history, { seed });
    });

    it("keeps many keys apart", async () => {
      const store = await fresh();
      const keys = Array.from({ length: 1_000 }, (_, i) => `many/${i}`);
      for (let i = 0; i < keys.length; i += 100) {
        const results = await Promise.all(keys.slice(i, i + 100).map((k) => store.putIfVersion(k, `value of ${k}`, 0, undefined)));
        expect(results.every((r) => r.ok)).toBe(true);
      }
      for (const k of keys) expect(await store.get(k)).toEqual(entry(`value of ${k}`, 1));
    });

    it("gives back a value at the size limit byte for byte", async () => {
      const store = await fresh();
      const unit = "aé€😀"; // 1 + 2 + 3 + 4 UTF-8 bytes
      const value = unit.repeat(Math.floor(maxValueBytes / 10)) + "a".repeat(maxValueBytes % 10);
      expect(Buffer.byteLength(value)).toBe(maxValueBytes);
      expect(await store.putIfVersion("large", value, 0, undefined)).toEqual(applied(1));
      expect((await store.get("large"))?.value === value).toBe(true);
      expect(await store.putIfVersion("empty", "", 0, undefined)).toEqual(applied(1));
      expect(await store.get("empty")).toEqual(entry("", 1));
    });

    it("keeps odd keys apart and gives them back as they were", async () => {
      const store = await fresh();
      for (const [i, key] of ODD_KEYS.entries()) expect(await store.putIfVersion(key, `v${i}`, 0, undefined)).toEqual(applied(1));
      for (const [i, key] of ODD_KEYS.entries()) expect(await store.get(key)).toEqual(entry(`v${i}`, 1));
      expect(await store.get("constructor ")).toBeUndefined();
      expect(await store.get("y".repeat(2000))).toBeUndefined();
    });

    // Waits of 60 s end the test by its timeout if a write does not wake them.
    it("answers a long-poll read through KVServer once a put changes the key, and the state then after the wait", async () => {
      const store = await fresh();
      const kv = new KVServer(store);
      // Absent, waiting for it to exist: a put from elsewhere wakes it.
      const waiting = kv.get("lp", { wait: { version: 0, ms: 60_000 } });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await store.putIfVersion("lp", "v1", 0, undefined);
      expect(await waiting).toEqual(got("v1", 1));
      // Already different: at once. Unchanged: after the wait, as it is.
      expect(await kv.get("lp", { wait: { version: 0, ms: 60_000 } })).toEqual(got("v1", 1));
      expect(await kv.get("lp", { wait: { version: 1, ms: 200 } })).toEqual(got("v1", 1));
      // A put to another key does not end the wait; one to the key does.
      let isAnswered = false;
      const moved = kv.get("lp", { wait: { version: 1, ms: 60_000 } }).then((r) => ((isAnswered = true), r));
      await store.putIfVersion("lp-other", "x", 0, undefined);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(isAnswered).toBe(false);
      await store.putIfVersion("lp", "v2", 1, undefined);
      expect(await moved).toEqual(got("v2", 2));
      // Many waiters on one key are all answered by one write.
      const many = Array.from({ length: 50 }, () => kv.get("lp", { wait: { version: 2, ms: 60_000 } }));
      await new Promise((resolve) => setTimeout(resolve, 100));
      await store.putIfVersion("lp", "v3", 2, undefined);
      const answers = await Promise.all(many);
      expect(answers[0]).toEqual(got("v3", 3));
      expect(new Set(answers.map((r) => JSON.stringify(r))).size).toBe(1);
      // An aborted wait ends at once with the state then.
      const ac = new AbortController();
      const aborted = kv.get("lp", { wait: { version: 3, ms: 60_000 }, signal: ac.signal });
      ac.abort();
      expect(await aborted).toEqual(got("v3", 3));
    });

    it("rejects calls after close with ERR_KV_CLOSED, and may be closed twice", async () => {
      const store = await fresh();
      await store.putIfVersion("k", "v", 0, undefined);
      await store.close();
      await store.close();
      await expect(store.get("k")).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
      await expect(store.putIfVersion("k", "v", 1, undefined)).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
    });

    describe("completion records", () => {
      const retentionMs = options.shortRetentionMs ?? 300;
      /** Until the store keeps no record: the retention, and however long the store takes to drop them after it. */
      const untilNoRecords = async (store: Store) => {
        const deadline = Date.now() + retentionMs * 4 + 5_000;
        while ((await store.completionRecords?.()) !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        expect(await store.completionRecords?.()).toBe(0);
      };

      it("records a retry's refusal, so an earlier try of the same put arriving later does not apply", async () => {
        const store = await fresh();
        expect(await store.putIfVersion("k", "v1", 0, "a")).toEqual(applied(1));
        // A first try refused needs no record: nothing of it can still be on its way.
        expect(await store.putIfVersion("k", "x", 2, "x-first")).toMatchObject({ ok: false });
        expect(await store.completionRecords?.()).toBe(1);
        // Put x names version 2; its first try is held back, its retry meets the key at 1: ErrVersion, recorded.
        expect(await new KVServer(store).put("k", "x", 2, "x", { isRetry: true })).toEqual({ err: "ErrVersion" });
        expect(await store.putIfVersion("k", "v2", 1, "b")).toEqual(applied(2));
        // The held-back first try arrives with the key at 2: the recorded refusal answers it.
        expect(await store.putIfVersion("k", "x", 2, "x")).toEqual({ recorded: { err: "ErrVersion" } });
        expect(await store.get("k")).toEqual(entry("v2", 2, "b"));
        expect(await store.putIfVersion("absent", "y", 3, "y", { isRetry: true })).toEqual({ ok: false, current: undefined });
        expect(await store.putIfVersion("absent", "y", 3, "y")).toEqual({ recorded: { err: "ErrNoKey" } });
      });

      it("decides an id once when two tries of one put race", async () => {
        const store = await fresh();
        const kv = new KVServer(store);
        const tries = await Promise.all([kv.put("race", "v", 0, "r"), kv.put("race", "v", 0, "r", { isRetry: true })]);
        expect(tries).toEqual([answered(1), answered(1)]);
        expect(await store.get("race")).toEqual(entry("v", 1, "r"));
      });

      it("answers a retry from its first try's record when the first try committed while the retry waited and another write followed", async () => {
        const store = await fresh();
        const kv = new KVServer(store);
        const timings = [() => Promise.resolve(), () => new Promise((r) => setImmediate(r)), () => new Promise((r) => setTimeout(r, 1))];
        for (let i = 0; i < 60; i++) {
          const key = `busy-${i}`;
          expect(await kv.put(key, "init", 0, undefined)).toEqual(answered(1));
          const first = store.putIfVersion(key, "mine", 1, `mine-${i}`);
          await timings[i % timings.length]?.(); // the retry in the first try's commit, or in a later one
          const retry = kv.put(key, "mine", 1, `mine-${i}`, { isRetry: true });
          // As soon as the first try is applied, someone else writes over it.
          const next = first.then(() => store.putIfVersion(key, "theirs", 2, `theirs-${i}`));
          // Either try may reach the store first: the other is answered from its record.
          expect([applied(2), { recorded: answered(2) }]).toContainEqual(await first);
          expect(await retry).toEqual(answered(2));
          expect(await next).toEqual(applied(3));
          expect(await kv.put(key, "mine", 1, `mine-${i}`, { isRetry: true })).toEqual(answered(2));
        }
      });

      it("decides a delete's id once: a retry gets the first outcome even after the key is created again, and a retry's refusal is recorded", async () => {
        const store = await fresh();
        const kv = new KVServer(store);
        await kv.put("del/r", "v", 0);
        const deleted = await kv.delete("del/r", 1, "del-1");
        expect(deleted).toEqual({ err: "OK", revision: expect.any(Number) });
        await kv.put("del/r", "again", 0);
        expect(await kv.delete("del/r", 1, "del-1", { isRetry: true })).toEqual(deleted); // recorded: the new key stays
        expect(await kv.get("del/r")).toEqual(got("again", 1));
        // A retry refused (absent) is recorded: its first try, arriving once the key exists, deletes nothing.
        expect(await kv.delete("del/late", undefined, "del-2", { isRetry: true })).toEqual({ err: "ErrNoKey" });
        await kv.put("del/late", "v", 0);
        expect(await kv.delete("del/late", undefined, "del-2")).toEqual({ err: "ErrNoKey" });
        expect(await kv.get("del/late")).toEqual(got("v", 1));
        // Ids are never reused, across kinds too.
        await expect(kv.delete("del/r", 1, "del-1-other")).resolves.toEqual({ err: "OK", revision: expect.any(Number) });
        await expect(kv.put("del/r", "v", 0, "del-1")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
        await expect(kv.delete("del/r", 2, "del-1")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
        await kv.put("del/p", "v", 0, "put-p");
        await expect(kv.delete("del/p", 0, "put-p")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
        expect(await kv.get("del/p")).toEqual(got("v", 1));
      });

      it("refuses an id recorded for another write with InvalidArgumentError, changing nothing", async () => {
        const store = await fresh();
        expect(await store.putIfVersion("k", "v", 0, "once")).toEqual(applied(1));
        await expect(store.putIfVersion("k", "w", 1, "once")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
        await expect(store.putIfVersion("other", "w", 0, "once")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
        expect(await store.get("k")).toEqual(entry("v", 1, "once"));
        expect(await store.get("other")).toBeUndefined();
      });

      it("keeps records for the retention, then evaluates a retry as new; the count returns to zero", async () => {
        const store = await fresh({ retentionMs });
        const kv = new KVServer(store);
        expect(await kv.put("k", "v1", 0, "first")).toEqual(answered(1));
        expect(await kv.put("k", "v2", 1, "second")).toEqual(answered(2));
        expect(await kv.put("k", "v1", 0, "first", { isRetry: true })).toEqual(answered(1)); // recorded
        expect(await store.completionRecords?.()).toBe(2);
        const recordedAt = Date.now();
        await untilNoRecords(store);
        expect(Date.now() - recordedAt).toBeGreaterThanOrEqual(retentionMs * 0.9); // never dropped early (timers may fire a little early)
        expect(await kv.put("k", "v1", 0, "first", { isRetry: true })).toEqual({ err: "ErrVersion" }); // new, and refused
        expect(await kv.get("k")).toEqual(got("v2", 2));
      });

      it("refuses a write that needs a record past maxIds (StoreUnavailableError, nothing changed) until records expire", async () => {
        const store = await fresh({ retentionMs, maxIds: 3 });
        for (const id of ["r1", "r2", "r3"]) expect(await store.putIfVersion(id, "v", 0, id)).toEqual(applied(1));
        await expect(store.putIfVersion("r4", "v", 0, "r4")).rejects.toMatchObject({ code: "ERR_KV_UNAVAILABLE" });
        expect(await store.get("r4")).toBeUndefined();
        expect(await store.putIfVersion("r1", "v", 0, "r1", { isRetry: true })).toEqual({ recorded: answered(1) });
        expect(await store.putIfVersion("free", "v", 0, undefined)).toEqual(applied(1)); // no id, no record
        await untilNoRecords(store);
        expect(await store.putIfVersion("r4", "v", 0, "r4")).toEqual(applied(1));
      });
    });

    const { reopen } = options;
    if (reopen !== undefined) {
      it("keeps every acknowledged put across a close and reopen", async () => {
        const store = await fresh();
        const keys = [...ODD_KEYS, ...Array.from({ length: 200 }, (_, i) => `durable/${i}`)];
        await Promise.all(keys.map((k, i) => store.putIfVersion(k, `first ${k}`, 0, `p1-${i}`)));
        await Promise.all(keys.map((k, i) => store.putIfVersion(k, `second ${k}`, 1, `p2-${i}`)));
        await store.close();
        const again = await reopen(store);
        opened.push(again);
        for (const [i, k] of keys.entries()) expect(await again.get(k)).toEqual(entry(`second ${k}`, 2, `p2-${i}`));
        expect(await again.putIfVersion(keys[0] as string, "third", 2, undefined)).toEqual(applied(3));
        if (again.completionRecords !== undefined) {
          // The records of acknowledged puts are as durable as the puts.
          expect(await again.putIfVersion(keys[1] as string, `first ${keys[1]}`, 0, "p1-1", { isRetry: true })).toEqual({
            recorded: answered(1),
          });
        }
      });
    }
  });
}
