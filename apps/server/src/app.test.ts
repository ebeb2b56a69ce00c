import { kvPath, MAX_VERSION } from "@kv/rpc";
import {
  MemoryStore,
  type DeleteIfVersionResult,
  type PutIfVersionResult,
  type PutOptions,
  type Store,
  type StoredEntry,
  StoreOutcomeUnknownError,
  StoreUnavailableError,
} from "@kv/server";
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { type Reply, startTestServer, type TestServer } from "./test-support/testing";

/** A MemoryStore that lists every write call made to it (putIfVersion, deleteIfVersion), whatever its outcome. */
class RecordingStore implements Store {
  /** Each call's key, expected version (-1: a delete without one) and id, in order; values are left out (some are 1 MiB). */
  readonly puts: Array<{ key: string; expectedVersion: number; putId: string | undefined }> = [];
  readonly #memory = new MemoryStore();

  get(key: string): Promise<StoredEntry | undefined> {
    return this.#memory.get(key);
  }

  putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options?: PutOptions,
  ): Promise<PutIfVersionResult> {
    this.puts.push({ key, expectedVersion, putId });
    return this.#memory.putIfVersion(key, value, expectedVersion, putId, options);
  }

  deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    id: string | undefined,
    options?: PutOptions,
  ): Promise<DeleteIfVersionResult> {
    this.puts.push({ key, expectedVersion: expectedVersion ?? -1, putId: id });
    return this.#memory.deleteIfVersion(key, expectedVersion, id, options);
  }

  close(): Promise<void> {
    return this.#memory.close();
  }
}

let kv: TestServer;
let recorder: RecordingStore;
beforeAll(async () => {
  recorder = new RecordingStore();
  kv = await startTestServer({}, recorder);
});
afterAll(() => kv.close());

/** Sends `request` to the shared server and asserts that it reached no putIfVersion. */
async function withoutPuts(request: () => Promise<Reply>): Promise<Reply> {
  const before = recorder.puts.length;
  const reply = await request();
  expect(recorder.puts.slice(before), "putIfVersion calls").toEqual([]);
  return reply;
}

describe("DELETE /v1/kv/:key (contract §2 and §4)", () => {
  it("deletes a key, at its version or whatever it is at, answering the revision; 404 when absent, 409 at another version", async () => {
    const created = (await kv.put("del-row", { value: "v", version: 0 })).body.revision as number;
    expect(await kv.request("DELETE", "/v1/kv/del-row?version=2")).toMatchObject({ status: 409, body: { err: "ErrVersion" } });
    const deleted = await kv.request("DELETE", "/v1/kv/del-row?version=1");
    expect(deleted).toMatchObject({ status: 200, body: { err: "OK", revision: expect.any(Number) } });
    expect(Object.keys(deleted.body)).toEqual(["err", "revision"]);
    expect(deleted.body.revision).toBeGreaterThan(created);
    expect(await kv.get("del-row")).toMatchObject({ status: 404, body: { err: "ErrNoKey" } });
    expect(await kv.request("DELETE", "/v1/kv/del-row")).toMatchObject({ status: 404, body: { err: "ErrNoKey" } });
    expect(await kv.put("del-row", { value: "again", version: 0 })).toMatchObject({ status: 200, body: { version: 1 } });
    expect(await kv.request("DELETE", "/v1/kv/del-row")).toMatchObject({ status: 200, body: { err: "OK" } });
  });

  it("answers a retried delete from its completion record, even after the key was created again", async () => {
    await kv.put("del-id", { value: "v", version: 0 });
    const first = await kv.request("DELETE", "/v1/kv/del-id?version=1&id=del-1");
    expect(first).toMatchObject({ status: 200, body: { err: "OK" } });
    await kv.put("del-id", { value: "again", version: 0 });
    expect(await kv.request("DELETE", "/v1/kv/del-id?version=1&id=del-1&retry=true")).toMatchObject({ status: 200, body: first.body });
    expect(await kv.get("del-id")).toMatchObject({ status: 200, body: { value: "again" } });
    expect(await kv.request("DELETE", "/v1/kv/del-id?version=2&id=del-1")).toMatchObject({ status: 400, body: { err: "ErrBadRequest" } });
  });

  it("says which methods a key has", async () => {
    const reply = await kv.request("PATCH", "/v1/kv/k");
    expect(reply).toMatchObject({ status: 405, headers: { allow: "GET, HEAD, PUT, DELETE" } });
  });
});

describe("GET and PUT /v1/kv/:key (contract §2 over HTTP)", () => {
  it("answers 404 ErrNoKey for a key never written", async () => {
    expect(await kv.get("row-absent")).toMatchObject({ status: 404, body: { err: "ErrNoKey" } });
  });

  it("creates a key at version 1 with version 0, then reads it back", async () => {
    expect(await kv.put("row-create", { value: "v", version: 0 })).toMatchObject({
      status: 200,
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    expect(await kv.get("row-create")).toMatchObject({
      status: 200,
      body: { err: "OK", value: "v", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
  });

  it("answers 404 ErrNoKey to a put on an absent key with a version above 0, creating nothing", async () => {
    expect(await kv.put("row-nokey", { value: "v", version: 3 })).toMatchObject({ status: 404, body: { err: "ErrNoKey" } });
    expect(await kv.get("row-nokey")).toMatchObject({ status: 404 });
  });

  it("writes at the current version and answers the next one, with the store revisions that made and created it", async () => {
    const created = (await kv.put("row-next", { value: "a", version: 0 })).body.revision as number;
    const written = await kv.put("row-next", { value: "b", version: 1 });
    expect(written).toEqual({ status: 200, headers: expect.anything(), body: { err: "OK", version: 2, revision: expect.any(Number) } });
    const revision = written.body.revision as number;
    expect(revision).toBeGreaterThan(created);
    expect((await kv.get("row-next")).body).toEqual({ err: "OK", value: "b", version: 2, modRevision: revision, createRevision: created });
  });

  it("answers 409 ErrVersion at another version and changes nothing", async () => {
    await kv.put("row-conflict", { value: "a", version: 0 });
    for (const version of [0, 2, MAX_VERSION]) {
      expect(await kv.put("row-conflict", { value: "x", version })).toMatchObject({ status: 409, body: { err: "ErrVersion" } });
    }
    expect(await kv.get("row-conflict")).toMatchObject({
      body: { err: "OK", value: "a", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
  });

  it("answers a retried put with the same id OK, even once another write came in between (its completion record)", async () => {
    expect(await kv.put("row-id", { value: "a", version: 0, id: "put-1" })).toMatchObject({
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    const retry = { value: "a", version: 0, id: "put-1", retry: true };
    expect(await kv.put("row-id", retry)).toMatchObject({ status: 200, body: { err: "OK", version: 1, revision: expect.any(Number) } });
    await kv.put("row-id", { value: "b", version: 1, id: "put-2" });
    expect(await kv.put("row-id", retry)).toMatchObject({ status: 200, body: { err: "OK", version: 1, revision: expect.any(Number) } });
    expect(await kv.get("row-id")).toMatchObject({ body: { value: "b", version: 2 } });
  });

  it("answers a retry refused once ErrVersion for good: its first try, arriving later, does not apply", async () => {
    await kv.put("row-refused", { value: "a", version: 0 });
    expect(await kv.put("row-refused", { value: "x", version: 2, id: "put-x", retry: true })).toMatchObject({ status: 409 });
    await kv.put("row-refused", { value: "b", version: 1 });
    expect(await kv.put("row-refused", { value: "x", version: 2, id: "put-x" })).toMatchObject({
      status: 409,
      body: { err: "ErrVersion" },
    });
    expect(await kv.get("row-refused")).toMatchObject({ body: { value: "b", version: 2 } });
  });

  it("refuses an id used for another write with 400, changing nothing", async () => {
    await kv.put("row-reused", { value: "a", version: 0, id: "put-once" });
    const reply = await kv.put("row-reused", { value: "b", version: 1, id: "put-once" });
    expect(reply).toMatchObject({ status: 400, body: { err: "ErrBadRequest", message: expect.stringContaining("ids are never reused") } });
    expect(await kv.get("row-reused")).toMatchObject({ body: { value: "a", version: 1 } });
  });

  it("refuses a retry flag that is not a boolean with 400", async () => {
    expect(await kv.put("row-flag", { value: "a", version: 0, retry: "yes" })).toMatchObject({
      status: 400,
      body: { err: "ErrBadRequest" },
    });
  });

  it("lets exactly one of 100 concurrent puts on the same key and version win", async () => {
    await kv.put("race", { value: "start", version: 0 });
    const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => kv.put("race", { value: `w${i}`, version: 1 })));
    const winners = replies.filter((r) => r.status === 200);
    expect(winners).toHaveLength(1);
    expect(winners[0]?.body).toEqual({ err: "OK", version: 2, revision: expect.any(Number) });
    expect(replies.filter((r) => r.status === 409 && r.body.err === "ErrVersion")).toHaveLength(99);
    const after = await kv.get("race");
    expect(after.body.version).toBe(2);
    expect(after.body.value).toMatch(/^w\d+$/);
  });
});

describe("keys are opaque strings", () => {
  const oddKeys = [
    "a/b",
    "%",
    "%2F",
    "a b",
    "a?b#c&d=e",
    "ключ",
    "🔑",
    "__proto__",
    "constructor",
    ".",
    "..",
    "../x",
    "\u0000",
    "+",
    "x".repeat(4096),
  ];

  it.each(oddKeys.map((k) => [JSON.stringify(k).slice(0, 30), k]))("round-trips the key %s unchanged", async (_, key) => {
    expect(await kv.put(key, { value: `value of ${key}`, version: 0 })).toMatchObject({ status: 200, body: { version: 1 } });
    expect(await kv.get(key)).toMatchObject({ status: 200, body: { value: `value of ${key}`, version: 1 } });
    expect(await kv.store.get(key)).toMatchObject({ value: `value of ${key}`, version: 1 });
  });

  it("keeps the odd keys apart from each other", async () => {
    const versions = await Promise.all(oddKeys.map(async (k) => (await kv.get(k)).body.version));
    expect(versions).toEqual(oddKeys.map(() => 1));
  });
});

describe("bad input is refused with the contract's reply and changes nothing", () => {
  const json = { "content-type": "application/json" };
  const cases: Array<
    [name: string, method: string, path: string, body: unknown, headers: Record<string, string>, status: number, err: string]
  > = [
    ["a missing value", "PUT", "/v1/kv/guarded", { version: 1 }, {}, 400, "ErrBadRequest"],
    ["a missing version", "PUT", "/v1/kv/guarded", { value: "x" }, {}, 400, "ErrBadRequest"],
    ["an extra field", "PUT", "/v1/kv/guarded", { value: "x", version: 1, ttl: 5 }, {}, 400, "ErrBadRequest"],
    ["a __proto__ field", "PUT", "/v1/kv/guarded", '{"value":"x","version":1,"__proto__":{"a":1}}', json, 400, "ErrBadRequest"],
    ["a version as a string", "PUT", "/v1/kv/guarded", { value: "x", version: "1" }, {}, 400, "ErrBadRequest"],
    ["a value as a number", "PUT", "/v1/kv/guarded", { value: 5, version: 1 }, {}, 400, "ErrBadRequest"],
    ["a null value", "PUT", "/v1/kv/guarded", { value: null, version: 1 }, {}, 400, "ErrBadRequest"],
    ["a negative version", "PUT", "/v1/kv/guarded", { value: "x", version: -1 }, {}, 400, "ErrBadRequest"],
    ["a fractional version", "PUT", "/v1/kv/guarded", { value: "x", version: 1.5 }, {}, 400, "ErrBadRequest"],
    ["a version of 2^53", "PUT", "/v1/kv/guarded", '{"value":"x","version":9007199254740992}', json, 400, "ErrBadRequest"],
    ["a version of 1e300", "PUT", "/v1/kv/guarded", '{"value":"x","version":1e300}', json, 400, "ErrBadRequest"],
    ["an empty id", "PUT", "/v1/kv/guarded", { value: "x", version: 1, id: "" }, {}, 400, "ErrBadRequest"],
    ["an id of 65 characters", "PUT", "/v1/kv/guarded", { value: "x", version: 1, id: "i".repeat(65) }, {}, 400, "ErrBadRequest"],
    ["an id as a number", "PUT", "/v1/kv/guarded", { value: "x", version: 1, id: 7 }, {}, 400, "ErrBadRequest"],
    ["a value with a lone surrogate", "PUT", "/v1/kv/guarded", '{"value":"\\ud800","version":1}', json, 400, "ErrBadRequest"],
    ["an array body", "PUT", "/v1/kv/guarded", [], {}, 400, "ErrBadRequest"],
    ["a null body", "PUT", "/v1/kv/guarded", "null", json, 400, "ErrBadRequest"],
    ["malformed JSON", "PUT", "/v1/kv/guarded", '{"value":"x",', json, 400, "ErrBadRequest"],
    ["an empty JSON body", "PUT", "/v1/kv/guarded", "", json, 400, "ErrBadRequest"],
    ["no body at all", "PUT", "/v1/kv/guarded", undefined, {}, 400, "ErrBadRequest"],
    ["a text/plain body", "PUT", "/v1/kv/guarded", '{"value":"x","version":1}', { "content-type": "text/plain" }, 400, "ErrBadRequest"],
    [
      "a form body",
      "PUT",
      "/v1/kv/guarded",
      "value=x&version=1",
      { "content-type": "application/x-www-form-urlencoded" },
      400,
      "ErrBadRequest",
    ],
    ["an unknown query parameter", "PUT", "/v1/kv/guarded?force=1", { value: "x", version: 1 }, {}, 400, "ErrBadRequest"],
    ["an empty key", "PUT", "/v1/kv/", { value: "x", version: 0 }, {}, 400, "ErrBadRequest"],
    ["no key segment", "PUT", "/v1/kv", { value: "x", version: 0 }, {}, 400, "ErrBadRequest"],
    ["a key of 4097 bytes", "PUT", `/v1/kv/${"k".repeat(4097)}`, { value: "x", version: 0 }, {}, 400, "ErrBadRequest"],
    [
      "a key too long for Node's 16 KiB request head",
      "PUT",
      `/v1/kv/${encodeURIComponent("é".repeat(3000))}`,
      { value: "x", version: 0 },
      {},
      400,
      "ErrBadRequest",
    ],
    ["malformed percent-encoding", "PUT", "/v1/kv/%zz", { value: "x", version: 0 }, {}, 400, "ErrBadRequest"],
    ["truncated UTF-8 in the key", "PUT", "/v1/kv/%E2%82", { value: "x", version: 0 }, {}, 400, "ErrBadRequest"],
    ["a DELETE at a version as a word", "DELETE", "/v1/kv/guarded?version=one", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE at a negative version", "DELETE", "/v1/kv/guarded?version=-1", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE at a version of 2^53", "DELETE", "/v1/kv/guarded?version=9007199254740992", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE with an unknown query parameter", "DELETE", "/v1/kv/guarded?force=1", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE with an empty id", "DELETE", "/v1/kv/guarded?id=", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE with an id of 65 characters", "DELETE", `/v1/kv/guarded?id=${"x".repeat(65)}`, undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE with retry=yes", "DELETE", "/v1/kv/guarded?retry=yes", undefined, {}, 400, "ErrBadRequest"],
    ["a DELETE without a key", "DELETE", "/v1/kv/", undefined, {}, 400, "ErrBadRequest"],
    ["a PATCH", "PATCH", "/v1/kv/guarded", undefined, {}, 405, "ErrMethodNotAllowed"],
    ["a POST", "POST", "/v1/kv/guarded", { value: "x", version: 1 }, {}, 405, "ErrMethodNotAllowed"],
    ["an OPTIONS", "OPTIONS", "/v1/kv/guarded", undefined, {}, 405, "ErrMethodNotAllowed"],
    ["an empty key on GET", "GET", "/v1/kv/", undefined, {}, 400, "ErrBadRequest"],
    ["an unknown query parameter on GET", "GET", "/v1/kv/guarded?x=1", undefined, {}, 400, "ErrBadRequest"],
    ["an unknown path", "GET", "/v2/kv/guarded", undefined, {}, 404, "ErrNotFound"],
  ];

  // Every test here sends only requests that must be refused: none may reach the store's one
  // write. Each check takes every call since the previous one, so a write that comes after its
  // reply fails the test in which it lands, and no call after the setup goes unchecked.
  let checkedPuts = 0;
  let guarded: StoredEntry | undefined;
  beforeAll(async () => {
    await kv.put("guarded", { value: "original", version: 0 });
    guarded = await kv.store.get("guarded");
    checkedPuts = recorder.puts.length;
  });
  afterEach(() => {
    const unchecked = recorder.puts.slice(checkedPuts);
    checkedPuts = recorder.puts.length;
    expect(unchecked, "putIfVersion calls").toEqual([]);
  });

  it.each(cases)("refuses %s", async (_, method, path, body, headers, status, err) => {
    const reply = await kv.request(method, path, body, headers);
    expect(reply.status).toBe(status);
    expect(reply.body.err).toBe(err);
    if (status === 400) expect(typeof reply.body.message).toBe("string");
    expect(guarded).toMatchObject({ value: "original", version: 1 });
    expect(await kv.store.get("guarded")).toEqual(guarded);
    expect(await kv.store.get("")).toBeUndefined();
    expect(await kv.store.get("%zz")).toBeUndefined();
    expect(await kv.store.get("k".repeat(4097))).toBeUndefined();
    expect(await kv.store.get("é".repeat(3000))).toBeUndefined();
  });

  it("names the extra field in its message", async () => {
    const reply = await kv.put("guarded", { value: "x", version: 1, ttl: 5 });
    expect(reply.body.message).toContain('"ttl"');
  });

  // The key route counts a key's UTF-8 bytes. The router refuses a key before that when its decoded
  // length is over maxParamLength (KV_MAX_KEY_BYTES × 3), through frameworkErrors: its message says
  // "got over", and that is what the third key checks; its request head still fits in Node's 16 KiB.
  it.each([
    ["4097 ASCII bytes", "k".repeat(4097), "got 4097"],
    ["4098 UTF-8 bytes, 12 294 characters once percent-encoded", "é".repeat(2049), "got 4098"],
    ["12 300 ASCII bytes, past the router's maxParamLength", "a".repeat(12_300), "got over 12288"],
  ])("refuses a key of %s with 400 naming the limit, on GET and PUT", async (_, key, got) => {
    expect(kvPath(key).length).toBeLessThan(16 * 1024 - 100);
    for (const reply of [await kv.put(key, { value: "x", version: 0 }), await kv.get(key)]) {
      expect(reply).toMatchObject({ status: 400, body: { err: "ErrBadRequest" } });
      expect(reply.body.message).toBe(`key must be at most 4096 UTF-8 bytes, ${got}`);
    }
    expect(await kv.store.get(key)).toBeUndefined();
  });

  it.each([
    ["a request line Node's parser refuses", "GET /v1/kv/é HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["a CONNECT", "CONNECT /v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["an unsupported Expect", "GET /v1/kv/guarded HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n", 417],
  ])("answers %s with the contract's shape", async (_, request, status) => {
    const text = await rawExchange(kv.base, request);
    expect(text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    expect(JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4))).toMatchObject({ err: "ErrBadRequest" });
  });

  it("serves a request without a Host header", async () => {
    const text = await rawExchange(kv.base, "GET /v1/kv/guarded HTTP/1.1\r\nConnection: close\r\n\r\n");
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
  });
});

/** Writes `request` on a fresh socket and returns everything read until the server closes it. */
async function rawExchange(base: string, request: string): Promise<string> {
  const { Socket } = await import("node:net");
  const url = new URL(base);
  return new Promise<string>((resolve, reject) => {
    const socket = new Socket();
    let data = "";
    socket.on("data", (chunk) => (data += chunk));
    socket.on("end", () => resolve(data));
    socket.on("error", reject);
    socket.connect(Number(url.port), url.hostname, () => socket.write(request));
  });
}

describe("value size limit (KV_MAX_VALUE_BYTES, default 1 MiB of UTF-8)", () => {
  const limit = 1024 * 1024;

  it("accepts a value of exactly the limit even when its JSON is six times larger", async () => {
    const value = "\u0001".repeat(limit);
    expect(await kv.put("big-at-limit", { value, version: 0 })).toMatchObject({ status: 200, body: { version: 1 } });
    expect((await kv.store.get("big-at-limit"))?.value).toBe(value);
  });

  it("refuses one byte more with 413 ErrTooLarge", async () => {
    const reply = await withoutPuts(() => kv.put("big-over", { value: "x".repeat(limit + 1), version: 0 }));
    expect(reply).toMatchObject({ status: 413, body: { err: "ErrTooLarge" } });
    expect(reply.body.message).toContain(String(limit));
    expect(await kv.store.get("big-over")).toBeUndefined();
  });

  it("counts UTF-8 bytes, not characters", async () => {
    const value = "€".repeat(Math.ceil(limit / 3) + 1); // fewer characters than the limit, more bytes
    expect(await withoutPuts(() => kv.put("big-euro", { value, version: 0 }))).toMatchObject({ status: 413, body: { err: "ErrTooLarge" } });
    expect(await kv.store.get("big-euro")).toBeUndefined();
  });

  it("answers 413 for a value over the limit even when it is also not well-formed Unicode", async () => {
    const reply = await withoutPuts(() => kv.put("big-surrogates", { value: "\udc00".repeat(limit), version: 0 }));
    expect(reply).toMatchObject({ status: 413, body: { err: "ErrTooLarge" } });
  });

  it("refuses a body past the body limit with 413 ErrTooLarge", async () => {
    const reply = await withoutPuts(() => kv.put("big-body", { value: "\u0001".repeat(limit + 200_000), version: 0 }));
    expect(reply).toMatchObject({ status: 413, body: { err: "ErrTooLarge" } });
    expect(await kv.store.get("big-body")).toBeUndefined();
  });
});

describe("configured limits", () => {
  it("applies KV_MAX_KEY_BYTES and KV_MAX_VALUE_BYTES", async () => {
    const store = new RecordingStore();
    const small = await startTestServer({ KV_MAX_KEY_BYTES: "8", KV_MAX_VALUE_BYTES: "4" }, store);
    onTestFinished(() => small.close());
    expect(await small.put("12345678", { value: "1234", version: 0 })).toMatchObject({ status: 200 });
    expect(await small.put("123456789", { value: "1", version: 0 })).toMatchObject({ status: 400, body: { err: "ErrBadRequest" } });
    expect(await small.put("k", { value: "12345", version: 0 })).toMatchObject({ status: 413, body: { err: "ErrTooLarge" } });
    expect(await small.store.get("123456789")).toBeUndefined();
    expect(await small.store.get("k")).toBeUndefined();
    expect(store.puts.map((p) => p.key)).toEqual(["12345678"]);
  });
});

describe("bearer token (KV_AUTH_TOKEN)", () => {
  let secured: TestServer;
  let securedStore: RecordingStore;
  beforeAll(async () => {
    securedStore = new RecordingStore();
    secured = await startTestServer({ KV_AUTH_TOKEN: "s3cret-token" }, securedStore);
    await securedStore.putIfVersion("k", "original", 0, undefined);
  });
  afterAll(() => secured.close());

  it.each([
    ["no token", {}],
    ["a wrong token", { authorization: "Bearer s3cret-tokeX" }],
    ["a token of another length", { authorization: "Bearer s3cret" }],
    ["another scheme", { authorization: "Basic s3cret-token" }],
  ])("answers 401 ErrUnauthorized to %s and reads and writes nothing", async (_, headers) => {
    expect(await secured.request("GET", "/v1/kv/k", undefined, headers)).toMatchObject({ status: 401, body: { err: "ErrUnauthorized" } });
    expect(await secured.request("PUT", "/v1/kv/k", { value: "x", version: 1 }, headers)).toMatchObject({ status: 401 });
    expect(await secured.request("PUT", "/v1/kv/new", { value: "x", version: 0 }, headers)).toMatchObject({ status: 401 });
    expect(await secured.store.get("k")).toEqual({ value: "original", version: 1, modRevision: 1, createRevision: 1 });
    expect(await secured.store.get("new")).toBeUndefined();
    expect(securedStore.puts.map((p) => p.key)).toEqual(["k"]); // the setup's put, nothing more
  });

  it("serves requests that carry the token", async () => {
    const auth = { authorization: "Bearer s3cret-token" };
    expect(await secured.request("GET", "/v1/kv/k", undefined, auth)).toMatchObject({ status: 200, body: { value: "original" } });
  });

  it("leaves /healthz and /readyz open", async () => {
    expect((await secured.request("GET", "/healthz")).status).toBe(200);
    expect((await secured.request("GET", "/readyz")).status).toBe(200);
  });
});

describe("closing", () => {
  it("closes the store once the app is closed", async () => {
    const own = await startTestServer();
    await own.close();
    await expect(own.store.get("k")).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
  });
});

describe("service routes", () => {
  it("answers /healthz and /readyz", async () => {
    expect(await kv.request("GET", "/healthz")).toMatchObject({ status: 200, body: { status: "ok" } });
    expect(await kv.request("GET", "/readyz")).toMatchObject({ status: 200, body: { status: "ready" } });
  });

  it("serves an OpenAPI document generated from the request schemas", async () => {
    const { status, body } = await kv.request("GET", "/openapi.json");
    expect(status).toBe(200);
    expect(body.openapi).toMatch(/^3\./);
    const route = body.paths["/v1/kv/{key}"];
    expect(Object.keys(route).sort()).toEqual(["delete", "get", "put"]);
    const schema = route.put.requestBody.content["application/json"].schema;
    expect(schema.required).toEqual(["value", "version"]);
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(route.put.responses)).toEqual(expect.arrayContaining(["200", "404", "409"]));
  });
});

describe("when the store cannot serve", () => {
  /** A store whose backend is away: reads are refused, and puts are refused or left unconfirmed. */
  function failingStore(putError: Error): Store {
    return {
      get: () => Promise.reject(new StoreUnavailableError("no quorum")),
      putIfVersion: () => Promise.reject(putError),
      deleteIfVersion: () => Promise.reject(putError),
      isReady: async () => false,
      close: async () => {},
    };
  }

  it("answers 503 ErrUnavailable with Retry-After when the store did not apply the call, and /readyz 503", async () => {
    const own = await startTestServer({}, failingStore(new StoreUnavailableError("no quorum")));
    onTestFinished(() => own.close());
    for (const reply of [await own.get("k"), await own.put("k", { value: "v", version: 0 })]) {
      expect(reply.status).toBe(503);
      expect(reply.body).toEqual({ err: "ErrUnavailable", message: "no quorum" });
      expect(reply.headers["retry-after"]).toBe("1");
    }
    const ready = await own.request("GET", "/readyz");
    expect(ready.status).toBe(503);
    expect(ready.body).toMatchObject({ err: "ErrUnavailable" });
    expect((await own.request("GET", "/healthz")).status).toBe(200);
  });

  it("answers 504 ErrMaybe when the store could not confirm a put (contract §4)", async () => {
    const own = await startTestServer({}, failingStore(new StoreOutcomeUnknownError("etcd timed out")));
    onTestFinished(() => own.close());
    const reply = await own.put("k", { value: "v", version: 0 });
    expect(reply.status).toBe(504);
    expect(reply.body).toEqual({ err: "ErrMaybe", message: "etcd timed out" });
  });
});
