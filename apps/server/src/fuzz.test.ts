// Fuzzing (issue 7): generated requests, well-formed and not, against a real server on a loopback
// port. The server must never answer 5xx, must give every 4xx an `err`, must stay up, and its store
// must hold exactly what a Map model of the puts it accepted predicts (contract §2 and §4).
import { Socket } from "node:net";
import { KV_PREFIX, kvPath, MAX_PUT_ID_LENGTH } from "@kv/rpc";
import { MemoryStore, type PutIfVersionResult } from "@kv/server";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Reply, startTestServer, type TestServer } from "./testing";

// Small limits put their edges within reach of cheap requests: keys and values just under and
// over them, and bodies past the body limit (6 × the value limit + 4 KiB), cost a few KiB each.
const MAX_KEY_BYTES = 64;
const MAX_VALUE_BYTES = 1024;
const ENV = {
  KV_MAX_KEY_BYTES: String(MAX_KEY_BYTES),
  KV_MAX_VALUE_BYTES: String(MAX_VALUE_BYTES),
  // Load shedding answers 503 by design; a stall of this shared machine must not count as a bug.
  KV_MAX_EVENT_LOOP_DELAY_MS: "0",
  // A raw request whose body is shorter than its Content-Length waits for the rest: answer 408 soon.
  KV_HEADERS_TIMEOUT_MS: "1000",
  KV_REQUEST_TIMEOUT_MS: "1500",
};
// 60 runs of 0–100 requests (50 on average; a failure shrinks to the few that matter), then a GET
// per key touched: about 3 500 requests in all.
const RUNS = 60;
const OPS_PER_RUN = { maxLength: 100, size: "max" } as const;
const RAW_RUNS = 300;
const MIN_REQUESTS = 2_000;
// Each shrinking step starts a server and replays up to 100 requests: the whole run, search and
// shrinking, stops after this (keeping what it found); the request count below fails a run cut short.
const SHRINK_BUDGET_MS = 60_000;

/** A MemoryStore that notes each write it applies, so a write that no reply accounts for shows. */
class WriteLoggingStore extends MemoryStore {
  readonly writes: string[] = [];

  override async putIfVersion(key: string, value: string, expectedVersion: number, putId: string | undefined): Promise<PutIfVersionResult> {
    const result = await super.putIfVersion(key, value, expectedVersion, putId);
    if (result.ok) this.writes.push(key);
    return result;
  }
}

/** A long string that prints as the expression that builds it, so counterexamples stay readable. */
class Long {
  constructor(
    readonly expression: string,
    readonly text: string,
  ) {}
  toString(): string {
    return this.text;
  }
  [fc.toStringMethod](): string {
    return this.expression;
  }
}
const long = (unit: string, times: number) => new Long(`${JSON.stringify(unit)}.repeat(${times})`, unit.repeat(times));

let requestsSent = 0;

// ---- The model: contract §2 over a Map ------------------------------------------------------

interface Entry {
  value: string;
  version: number;
  putId?: string;
}
interface PutBody {
  value: string;
  version: number;
  id?: string;
}
type PutReply = { err: "OK"; version: number } | { err: "ErrNoKey" } | { err: "ErrVersion" };

/** Applies one accepted put to `model` as contract §2 says, and returns the reply it must get. */
function modelPut(model: Map<string, Entry>, key: string, { value, version, id }: PutBody): PutReply {
  const current = model.get(key);
  if ((current?.version ?? 0) === version) {
    model.set(key, id === undefined ? { value, version: version + 1 } : { value, version: version + 1, putId: id });
    return { err: "OK", version: version + 1 };
  }
  if (current === undefined) return { err: "ErrNoKey" };
  // A retry of the put that made the current version: answered OK, nothing changes.
  if (id !== undefined && current.putId === id && current.version === version + 1) return { err: "OK", version: current.version };
  return { err: "ErrVersion" };
}

// ---- The mirror: what the server must make of a request, decided from its bytes alone ---------

/** A key route path's key, decoded as the router does (`?` and `#` end the path); `bad` when it cannot be. */
function keyOf(path: string): { key: string; query: string } | "bad" | undefined {
  const end = path.search(/[?#]/);
  const [route, query] = end === -1 ? [path, ""] : [path.slice(0, end), path.slice(end)];
  if (!route.startsWith(KV_PREFIX) || route.slice(KV_PREFIX.length).includes("/")) return undefined;
  // Node's parser refuses a request line with bytes outside printable ASCII.
  if (/[^\x21-\x7e]/.test(path)) return "bad";
  try {
    return { key: decodeURIComponent(route.slice(KV_PREFIX.length)), query };
  } catch {
    return "bad";
  }
}

const isValidKey = (key: string) => key !== "" && Buffer.byteLength(key) <= MAX_KEY_BYTES;

/** The put the contract says `body` is, or why it is bad input (contract §4: strict JSON types, no extra fields). */
function putBodyOf(contentType: string | undefined, body: string | Buffer | undefined): PutBody | string {
  if (body === undefined) return "no body";
  if (contentType?.split(";")[0]?.trim().toLowerCase() !== "application/json") return "not JSON";
  let text = body.toString();
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // Fastify's JSON parser skips a byte order mark
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return "malformed JSON";
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return "not an object";
  const fields = parsed as Record<string, unknown>;
  const extra = Object.keys(fields).find((f) => !["value", "version", "id"].includes(f));
  if (extra !== undefined) return `extra field ${JSON.stringify(extra)}`;
  const { value, version, id } = fields;
  if (typeof value !== "string" || !value.isWellFormed() || Buffer.byteLength(value) > MAX_VALUE_BYTES) return "bad value";
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 0) return "bad version";
  if (!("id" in fields)) return { value, version };
  const idLength = typeof id === "string" ? [...id].length : 0;
  if (typeof id !== "string" || idLength < 1 || idLength > MAX_PUT_ID_LENGTH || !id.isWellFormed()) return "bad id";
  return { value, version, id };
}

// ---- Generated requests ----------------------------------------------------------------------

const SMALL_KEYS = ["a", "b", "c"];
const ODD_KEYS = [
  ...["__proto__", "constructor", "prototype", "toString", "hasOwnProperty", ".", "..", "...", "%2F", "%", "a/b", "/"],
  ...["?", "#", "a?b#c&d=e", "+", " ", ";", "ключ", "🔑", "e\u0301", "\u0000", "\u{10ffff}", "k".repeat(MAX_KEY_BYTES)],
  ...["é".repeat(MAX_KEY_BYTES / 2), "k".repeat(MAX_KEY_BYTES + 1), "é".repeat(MAX_KEY_BYTES / 2 + 1), "x".repeat(MAX_KEY_BYTES * 3 + 1), ""],
];
const keyArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 6, arbitrary: fc.constantFrom(...SMALL_KEYS) },
  { weight: 3, arbitrary: fc.constantFrom(...ODD_KEYS) },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 6 }) },
);

const percentBytes = (key: string, hex: (b: number) => string) => [...Buffer.from(key)].map((b) => `%${hex(b)}`).join("");
/** Ways to write a key as one path segment; `double` encodes it twice, which names another key. */
const ENCODINGS = {
  component: encodeURIComponent,
  everyByte: (key: string) => percentBytes(key, (b) => b.toString(16).toUpperCase().padStart(2, "0")),
  everyByteLower: (key: string) => percentBytes(key, (b) => b.toString(16).padStart(2, "0")),
  // Sub-delimiters a path segment may carry as they are.
  minimal: (key: string) => encodeURIComponent(key).replace(/%(24|26|2B|2C|3A|3B|3D|40)/g, (m) => decodeURIComponent(m)),
  double: (key: string) => encodeURIComponent(encodeURIComponent(key)),
};
const SUFFIXES = ["?", "#", "#frag", "?x=1", "?__proto__=1", "?a&b", "?%zz", "?waitVersion=0&waitMs=10", "?waitMs=abc"];
const keyPathArb = fc
  .tuple(
    keyArb,
    fc.constantFrom(...(Object.keys(ENCODINGS) as Array<keyof typeof ENCODINGS>)),
    fc.oneof({ withCrossShrink: true }, { weight: 7, arbitrary: fc.constant("") }, { weight: 1, arbitrary: fc.constantFrom(...SUFFIXES) }),
  )
  .map(([key, encoding, suffix]) => KV_PREFIX + ENCODINGS[encoding](key) + suffix);
const PATH_STARTS = ["/v1/kv/", "/v1/kv/", "/v1/kv", "/", "/v1/", "/v1/kv//", "/V1/KV/", "//v1/kv/", "/v1/./kv/", "/v1/kv/../kv/", "/v2/kv/"];
const PATH_PIECES = [
  ...["a", "b", "%", "%2", "%zz", "%2F", "%2f", "%25", "%252F", "%2e%2e", "%E2%82", "%ED%A0%80", "%C0%AF", "%FF", "%00", "%7F", "%F0%9F%94%91"],
  ...["?", "#", "&", "=", ";", ".", "..", "/", "\\", "~", "*", "|", "{", "\"", "<", "é", "ÿ", "\x7f"],
];
const rawPathArb = fc.oneof(
  { withCrossShrink: true },
  fc
    .tuple(fc.constantFrom(...PATH_STARTS), fc.array(fc.constantFrom(...PATH_PIECES), { maxLength: 6 }))
    .map(([start, pieces]) => start + pieces.join("")),
  fc.constantFrom("/healthz", "/readyz", "/metrics", "/openapi.json", "/healthz?x=1", "/v1", "/v1/kv/a/b"),
);

/** JSON text, nested, with the keys that trouble objects and the numbers that trouble parsers. */
const jsonTextArb: fc.Arbitrary<string> = fc.letrec<{ node: string; object: string; array: string }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constantFrom("null", "true", "false", "0", "-0", "1.5", "1e400", "-1e400", "9007199254740993", `1${"0".repeat(400)}`),
    fc.constantFrom('"\\ud800"', '"1"', "[]", "{}"),
    fc.string({ maxLength: 10 }).map((s) => JSON.stringify(s)),
    tie("object"),
    tie("array"),
  ),
  object: fc
    .array(fc.tuple(fc.constantFrom("__proto__", "constructor", "prototype", "value", "version", "id", "a"), tie("node")), { maxLength: 4 })
    .map((fields) => `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`),
  array: fc.array(tie("node"), { maxLength: 4 }).map((items) => `[${items.join(",")}]`),
})).node;

const LAST_ID = Symbol("the id of the put that made the key's current version");
const valueArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 8, arbitrary: fc.string({ unit: "grapheme", maxLength: 12 }) },
  { weight: 1, arbitrary: fc.constantFrom<string | Long>("\ud800", "a\udfff", "\u0000", "\u2028", '"\\', long("€", MAX_VALUE_BYTES / 3 + 1)) },
  // At the value limit, one byte over, and at the limit but six times larger once JSON-escaped.
  { weight: 1, arbitrary: fc.constantFrom(long("v", MAX_VALUE_BYTES), long("v", MAX_VALUE_BYTES + 1), long("\u0001", MAX_VALUE_BYTES)) },
);
const putSpecArb = fc.record({
  value: valueArb,
  // Small versions, and often the key's version at send time, so puts succeed and retries happen.
  version: fc.oneof({ withCrossShrink: true }, fc.nat(3), fc.constantFrom("current", "current", "current+1", "current-1")),
  versionSpelling: fc.constantFrom("plain", "plain", "plain", "fraction", "exponent", "negative zero"),
  id: fc.option(
    fc.oneof(
      { withCrossShrink: true },
      { weight: 4, arbitrary: fc.constantFrom<string | typeof LAST_ID>("id-1", "id-2", LAST_ID) },
      {
        weight: 1,
        arbitrary: fc.constantFrom(
          ...["", "\ud800", "i".repeat(MAX_PUT_ID_LENGTH), "i".repeat(MAX_PUT_ID_LENGTH + 1)],
          ...["🔑".repeat(MAX_PUT_ID_LENGTH), "🔑".repeat(MAX_PUT_ID_LENGTH + 1)], // 64 and 65 characters, twice as many UTF-16 units
        ),
      },
    ),
    { freq: 2 },
  ),
  // Mostly none: a put that is sent as it should be exercises the model.
  mutation: fc.oneof(
    { withCrossShrink: true },
    { weight: 9, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("drop" as const), field: fc.constantFrom("value", "version") }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constantFrom("replace" as const, "repeat" as const, "add" as const),
        field: fc.constantFrom("value", "version", "id"),
        text: jsonTextArb,
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant("add" as const),
        field: fc.constantFrom("__proto__", "\\u005f_proto__", "constructor", "ttl", "Value", ""),
        text: jsonTextArb,
      }),
    },
  ),
  shape: fc.record(
    { rotate: fc.nat(3), space: fc.constantFrom("", "", " ", "\n\t"), escapeNames: fc.boolean(), byteOrderMark: fc.boolean() },
    { requiredKeys: [] },
  ),
});
type PutSpec = typeof putSpecArb extends fc.Arbitrary<infer T> ? T : never;

const deep = (depth: number, open: string, close: string, inner = "") =>
  new Long(
    `${JSON.stringify(open)}.repeat(${depth}) + ${JSON.stringify(inner + close)}.repeat(${depth})`,
    open.repeat(depth) + inner + close.repeat(depth),
  );
const bodyArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 14, arbitrary: putSpecArb.map((spec) => ({ kind: "put" as const, spec })) },
  { weight: 1, arbitrary: jsonTextArb.map((text) => ({ kind: "text" as const, text })) },
  {
    weight: 1,
    arbitrary: fc
      .oneof<Array<fc.Arbitrary<string | Buffer | Long>>>(
        fc.string({ maxLength: 30 }),
        fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)),
        fc.constantFrom("", "null", '{"value":"x","version":0', '{"value":"x","version":0}{}'),
        fc.constantFrom("value=x&version=0", "{'value':'x','version':0}"),
        fc.constantFrom(deep(3_000, "[", "]"), deep(2_000, '{"a":', "}", "0"), long("x", MAX_VALUE_BYTES * 7 + 4_096)),
      )
      .map((text) => ({ kind: "text" as const, text })),
  },
);

const CONTENT_TYPES = [
  ...["application/json; charset=utf-8", "APPLICATION/JSON", "application/json;charset=latin1", "application/json ; x=y", "text/plain", "text/json"],
  ...["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "application/json+x", "application/*", "*/*", ""],
  ...["application/json, text/plain", "application/octet-stream"],
];
const someHeadersArb = fc.record(
  {
    accept: fc.constantFrom("*/*", "text/html", "application/xml", ""),
    "accept-encoding": fc.constantFrom("gzip", "br, deflate", "identity;q=0", "*"),
    "content-encoding": fc.constantFrom("gzip", "deflate", "identity", "x"),
    authorization: fc.constantFrom("Bearer x", "Basic eDp5", ""),
    host: fc.constantFrom("example.com", "", "a b", "127.0.0.1:1"),
    "x-http-method-override": fc.constantFrom("DELETE", "GET"),
    "x-fuzz": fc.string({ unit: "grapheme-ascii", maxLength: 20 }),
  },
  { requiredKeys: [] },
);
const headersArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 12, arbitrary: fc.constant(null) },
  { weight: 4, arbitrary: someHeadersArb },
  // Past Node's 16 KiB request head: the parser refuses it before Fastify sees it.
  { weight: 1, arbitrary: someHeadersArb.map((headers) => ({ ...headers, "x-huge": long("h", 17 * 1024) })) },
);

const METHODS = ["HEAD", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "LOCK", "BREW", "FOO"];
const opArb = fc.record({
  method: fc.oneof(
    { withCrossShrink: true },
    { weight: 6, arbitrary: fc.constant("PUT") },
    { weight: 3, arbitrary: fc.constant("GET") },
    { weight: 1, arbitrary: fc.constantFrom(...METHODS) },
  ),
  path: fc.oneof({ withCrossShrink: true }, { weight: 9, arbitrary: keyPathArb }, { weight: 1, arbitrary: rawPathArb }),
  contentType: fc.oneof(
    { withCrossShrink: true },
    { weight: 16, arbitrary: fc.constant("application/json") },
    { weight: 2, arbitrary: fc.constantFrom(...CONTENT_TYPES) },
    { weight: 1, arbitrary: fc.constant(undefined) },
  ),
  headers: headersArb,
  body: bodyArb,
});
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

/** The put body `spec` stands for, as JSON text, with versions and ids resolved against the model. */
function putText(spec: PutSpec, current: Entry | undefined): string {
  const at = current?.version ?? 0;
  const version = typeof spec.version === "number" ? spec.version : { current: at, "current+1": at + 1, "current-1": at - 1 }[spec.version];
  const versionText = {
    plain: `${version}`,
    fraction: `${version}.0`,
    exponent: `${version}e0`,
    "negative zero": version === 0 ? "-0" : `${version}`,
  }[spec.versionSpelling];
  const id = spec.id === LAST_ID ? (current?.putId ?? "id-1") : spec.id;
  let fields: Array<[string, string]> = [["value", JSON.stringify(String(spec.value))], ["version", versionText]];
  if (id !== null) fields.push(["id", JSON.stringify(id)]);
  const { mutation, shape } = spec;
  if (mutation?.kind === "drop") fields = fields.filter(([name]) => name !== mutation.field);
  if (mutation?.kind === "replace") fields = fields.map(([name, text]) => [name, name === mutation.field ? mutation.text : text]);
  if (mutation?.kind === "repeat" || mutation?.kind === "add") fields.push([mutation.field, mutation.text]);
  const rotate = (shape.rotate ?? 0) % fields.length;
  fields = [...fields.slice(rotate), ...fields.slice(0, rotate)];
  // `\u0076alue` is `value` to a JSON parser; names already escaped (`\u005f_proto__`) stay as they are.
  const escape = (n: string) => `"\\u${n.charCodeAt(0).toString(16).padStart(4, "0")}${n.slice(1)}"`;
  const name = (n: string) => (n.includes("\\") ? `"${n}"` : shape.escapeNames && n !== "" ? escape(n) : JSON.stringify(n));
  const sp = shape.space ?? "";
  const json = `{${sp}${fields.map(([n, text]) => `${name(n)}${sp}:${sp}${text}`).join(`,${sp}`)}${sp}}`;
  return shape.byteOrderMark ? `\ufeff${json}` : json;
}

// ---- One run: send the ops in order, check each reply, then the store against the model -------

const toStrings = (headers: Record<string, string | Long>) =>
  Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, String(value)]));

interface Sent {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string | Buffer | undefined;
}

const describeRequest = ({ method, path, headers, body }: Sent) => {
  const cut = (s: string) => (s.length > 300 ? `${s.slice(0, 300)}… (${s.length} chars)` : s);
  return `${method} ${cut(path)} headers=${cut(JSON.stringify(headers))} body=${body === undefined ? "none" : cut(JSON.stringify(body.toString()))}`;
};

/** Sends `sent`; a connection the server closed without a reply comes back as `undefined`. */
async function send(kv: TestServer, sent: Sent): Promise<Reply | undefined> {
  requestsSent++;
  try {
    return await kv.request(sent.method, sent.path, sent.body, sent.headers);
  } catch (err) {
    // A request head past Node's limit, or a body past Fastify's, may be cut off mid-send.
    const headBytes = JSON.stringify(sent.headers).length + sent.path.length;
    const isOversized = headBytes > 16 * 1024 || (sent.body?.length ?? 0) > MAX_VALUE_BYTES * 6;
    if (isOversized && (err as { code?: string }).code === "UND_ERR_SOCKET") return undefined;
    throw new Error(`no reply to ${describeRequest(sent)}`, { cause: err });
  }
}

const getReply = (entry: Entry | undefined) =>
  entry === undefined ? { err: "ErrNoKey" } : { err: "OK", value: entry.value, version: entry.version };
const isContractOutcome = (r: Reply) =>
  (r.status === 200 && r.body?.err === "OK") || (r.status === 404 && r.body?.err === "ErrNoKey") || (r.status === 409 && r.body?.err === "ErrVersion");

async function runOps(ops: Op[]): Promise<void> {
  const store = new WriteLoggingStore();
  const kv = await startTestServer(ENV, store);
  try {
    const model = new Map<string, Entry>();
    const touched = new Set<string>();
    for (const op of ops) {
      const target = keyOf(op.path);
      const key = typeof target === "object" ? target.key : undefined;
      if (key !== undefined) touched.add(key);
      const text = op.body.kind === "put" ? putText(op.body.spec, key === undefined ? undefined : model.get(key)) : op.body.text;
      const body = text instanceof Long ? text.text : text;
      // A GET or HEAD keeps only odd bodies: with a put body on most of them, hardly any GET would be plain.
      const isBodyless = (op.method === "GET" || op.method === "HEAD") && op.body.kind === "put";
      const sent: Sent = {
        method: op.method,
        path: op.path,
        headers: { ...toStrings(op.headers ?? {}), ...(op.contentType === undefined ? {} : { "content-type": op.contentType }) },
        body: isBodyless ? undefined : body,
      };
      const what = describeRequest(sent);
      const writesBefore = store.writes.length;
      const reply = await send(kv, sent);
      if (reply === undefined) {
        expect(store.writes.slice(writesBefore), `store writes after ${what}`).toEqual([]);
        continue;
      }

      expect(reply.status, `status of ${what}`).toBeLessThan(500);
      // A reply to HEAD has no body, by HTTP.
      if (reply.status >= 400 && op.method !== "HEAD") {
        expect(typeof reply.body?.err, `err of the ${reply.status} to ${what}: ${JSON.stringify(reply.body)}`).toBe("string");
      }

      const put = putBodyOf(sent.headers["content-type"], sent.body);
      // Well-formed in every respect: the server must answer it with a contract outcome.
      const isPlainPath = key !== undefined && isValidKey(key) && /^[\w\-.~!$&'()*+,;=:@%]*$/.test(op.path.slice(KV_PREFIX.length));
      const isPlainPut =
        typeof put === "object" && /^application\/json(; charset=utf-8)?$/.test(op.contentType ?? "") && !body.toString().startsWith("\ufeff");
      const isCanonical =
        isPlainPath && op.headers === null && ((op.method === "GET" && sent.body === undefined) || (op.method === "PUT" && isPlainPut));
      if (isCanonical) expect(isContractOutcome(reply), `a contract outcome for ${what}, got ${reply.status} ${JSON.stringify(reply.body)}`).toBe(true);

      let wrote: string[] = [];
      if (op.method === "PUT" && isContractOutcome(reply)) {
        expect(key !== undefined && isValidKey(key), `a valid key in ${what}`).toBe(true);
        expect(typeof put === "object" ? "valid" : put, `the put body of ${what}`).toBe("valid");
        const params = target !== "bad" ? (target?.query.replace(/^[?#]/, "").split("&") ?? []) : [];
        expect(params.filter((p) => p !== "" && !/^wait(Version|Ms)=/.test(p)), `unknown query parameters in ${what}`).toEqual([]);
        const before = model.get(key as string);
        const expected = modelPut(model, key as string, put as PutBody);
        expect(reply.body, `reply to ${what}`).toEqual(expected);
        if (model.get(key as string) !== before) wrote = [key as string];
      } else if (op.method === "GET" && isContractOutcome(reply)) {
        expect(key !== undefined && isValidKey(key), `a valid key in ${what}`).toBe(true);
        const entry = model.get(key as string);
        expect(reply.body, `reply to ${what}`).toEqual(getReply(entry));
      }
      // Only an accepted put that the model says changes the key may write, and only that key.
      expect(store.writes.slice(writesBefore), `store writes after ${what}`).toEqual(wrote);
    }

    for (const key of touched) {
      const entry = model.get(key);
      const reply = await send(kv, { method: "GET", path: kvPath(key), headers: {}, body: undefined });
      if (isValidKey(key)) {
        expect(reply?.body, `GET ${kvPath(key)} at the end`).toEqual(getReply(entry));
      } else {
        expect(reply?.status, `GET ${kvPath(key).slice(0, 300)} at the end`).toBe(400);
      }
      expect(await store.get(key), `the store's entry for ${JSON.stringify(key)}`).toEqual(entry);
    }
    expect(store.writes.filter((k) => !model.has(k)), "keys written that the model never accepted").toEqual([]);
    expect((await send(kv, { method: "GET", path: "/healthz", headers: {}, body: undefined }))?.status).toBe(200);
  } finally {
    await kv.close();
  }
}

// ---- Malformed HTTP on a raw socket ----------------------------------------------------------

/** Writes `bytes` on a fresh socket, half-closes it, and returns all the server sent before closing. */
function exchange(base: string, bytes: Buffer): Promise<Buffer> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("the server neither answered nor closed the connection within 5 s"));
    }, 5_000);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    // A reset after the server refused a request is a closed connection, which is allowed.
    socket.on("error", () => {});
    socket.connect(Number(port), hostname, () => socket.end(bytes));
  });
}

/** The HTTP/1.1 replies in `data`, in order; throws on bytes that are not a whole reply. */
function parseReplies(data: Buffer): Array<{ status: number; body: string }> {
  const replies: Array<{ status: number; body: string }> = [];
  let rest = data.toString("latin1");
  while (rest.length > 0) {
    const end = rest.indexOf("\r\n\r\n");
    const match = /^HTTP\/1\.[01] (\d{3})[ \r]/.exec(rest);
    if (end === -1 || match === null) throw new Error(`not an HTTP reply: ${JSON.stringify(rest.slice(0, 200))}`);
    const status = Number(match[1]);
    const headers = new Map(
      rest
        .slice(0, end)
        .split("\r\n")
        .slice(1)
        .map((line) => [line.slice(0, line.indexOf(":")).toLowerCase(), line.slice(line.indexOf(":") + 1).trim()]),
    );
    rest = rest.slice(end + 4);
    let body = "";
    if (status >= 200 && headers.has("content-length")) {
      const length = Number(headers.get("content-length"));
      [body, rest] = [rest.slice(0, length), rest.slice(length)];
    } else if (status >= 200 && headers.get("transfer-encoding") === "chunked") {
      for (let size = -1; size !== 0; ) {
        const lineEnd = rest.indexOf("\r\n");
        size = Number.parseInt(rest.slice(0, lineEnd), 16);
        body += rest.slice(lineEnd + 2, lineEnd + 2 + size);
        rest = rest.slice(lineEnd + 2 + size + 2);
      }
    } else if (status >= 200) {
      [body, rest] = [rest, ""];
    }
    replies.push({ status, body: Buffer.from(body, "latin1").toString() });
  }
  return replies;
}

const parseJson = (text: string): { err?: unknown } | undefined => {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
};

const RAW_PUT_BODY = '{"value":"raw","version":0}';
const requestLineArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("GET /v1/kv/raw HTTP/1.1", "PUT /v1/kv/raw HTTP/1.1", "PUT /v1/kv/r%61w HTTP/1.1") },
  {
    weight: 6,
    arbitrary: fc.constantFrom(
      ...["GET /v1/kv/raw", "GET  /v1/kv/raw HTTP/1.1", "GET /v1/kv/raw HTTP/1.1 x", "GET /v1/kv/ключ HTTP/1.1", "get /v1/kv/raw HTTP/1.1"],
      ...["put /v1/kv/raw HTTP/1.1", "G\u0000T /v1/kv/raw HTTP/1.1", "PUT /v1/kv/raw HTTP/9.9", "PUT /v1/kv/raw HTTP/1.0"],
      ...["GET /v1/kv/raw HTTP/2.0"],
      ...["PUT http://127.0.0.1/v1/kv/raw HTTP/1.1", "GET * HTTP/1.1", "OPTIONS * HTTP/1.1", "CONNECT 127.0.0.1:1 HTTP/1.1"],
      ...["PUT /v1/kv/a\tb HTTP/1.1"],
      ...["PUT /v1/kv/a b HTTP/1.1", "PRI * HTTP/2.0", "", "GET /v1/kv/%zz HTTP/1.1", "PUT /v1/kv/%ED%A0%80 HTTP/1.1", "PUT /v1/kv/\u00ff HTTP/1.1"],
      "GET /v1/kv/{a×20000} HTTP/1.1",
      "GET /v1/kv/raw HTTP/1.1\r\n",
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
);
const headerLineArb = fc.oneof(
  fc.constantFrom("Host: x", "Content-Type: application/json", "Connection: keep-alive", "Connection: close"),
  fc.constantFrom("Expect: 100-continue", "Expect: 200-ok"),
  fc.constantFrom(
    ...["NoColon", " Leading-Space: x", "Bad Name: x", "X: a\rb", "X: \u0000", "X: a\r\n b", "Xé: 1", ": empty-name", "Content-Length: abc"],
    ...["Content-Length: -1", "Content-Length: 1, 2", "Content-Length: 5\r\nContent-Length: 6"],
    ...["Transfer-Encoding: gzip", "Transfer-Encoding: chunked, identity"],
    ...["Upgrade: websocket\r\nConnection: Upgrade", "Host: a\r\nHost: b", "X-Long: {l×20000}", "Content-Type: text/plain"],
  ),
  fc.string({ maxLength: 30 }),
);
const framingArb = fc.constantFrom("none", "length", "short", "long", "chunked", "bad chunk", "chunked and length");
const rawRequestArb = fc
  .record({
    line: requestLineArb,
    headers: fc.array(headerLineArb, { maxLength: 4 }),
    framing: framingArb,
    eol: fc.constantFrom("\r\n", "\r\n", "\n"),
    // What follows on the same connection: another request, well-formed or not, or a stray byte.
    then: fc.constantFrom("", "", "GET /healthz HTTP/1.1\r\n\r\n", "x", "BREW / HTTP/1.1\r\n\r\n", "GET /v1/kv/é HTTP/1.1\r\n\r\n"),
  })
  .map(({ line, headers, framing, eol, then }) => {
    const length = Buffer.byteLength(RAW_PUT_BODY);
    const chunked = `${length.toString(16)}\r\n${RAW_PUT_BODY}\r\n0\r\n\r\n`;
    const [framingHeaders, body] = {
      none: [[], ""],
      length: [[`Content-Length: ${length}`], RAW_PUT_BODY],
      short: [[`Content-Length: ${length + 10}`], RAW_PUT_BODY],
      long: [[`Content-Length: ${length - 5}`], RAW_PUT_BODY],
      chunked: [["Transfer-Encoding: chunked"], chunked],
      "bad chunk": [["Transfer-Encoding: chunked"], `zz\r\n${RAW_PUT_BODY}\r\n0\r\n\r\n`],
      "chunked and length": [["Transfer-Encoding: chunked", `Content-Length: ${length}`], chunked],
    }[framing] as [string[], string];
    const head = [line, ...headers, "Content-Type: application/json", ...framingHeaders].join(eol);
    return `${head}${eol}${eol}${body}${then}`;
  });

// ---- The tests -------------------------------------------------------------------------------

describe("the server under generated requests (issue 7)", () => {
  it(
    "never answers 5xx, gives every 4xx an err, and changes the store only as a Map model of the accepted puts predicts",
    async () => {
      const before = requestsSent;
      await fc.assert(fc.asyncProperty(fc.array(opArb, OPS_PER_RUN), runOps), {
        numRuns: RUNS,
        plugins: [fc.interruptAfterTimeLimit(SHRINK_BUDGET_MS)],
      });
      expect(requestsSent - before).toBeGreaterThanOrEqual(MIN_REQUESTS);
    },
    120_000,
  );

  describe("on a raw socket", () => {
    let kv: TestServer;
    let store: WriteLoggingStore;
    beforeAll(async () => {
      store = new WriteLoggingStore();
      kv = await startTestServer(ENV, store);
    });
    afterAll(() => kv.close());

    it(
      "answers malformed HTTP with 4xx and an err, or closes the connection, writes only for puts it answered OK, and stays up",
      async () => {
        await fc.assert(
          fc.asyncProperty(rawRequestArb, async (template) => {
            // A fresh key for each exchange, so that every well-formed put in it creates its key;
            // `{a×20000}` stands for 20 000 a's, which would bury a counterexample.
            const request = template
              .replace(/\/v1\/kv\/(raw|r%61w)\b/g, (path) => `${path}-${requestsSent}`)
              .replace(/\{(.)×(\d+)\}/g, (_, unit: string, times: string) => unit.repeat(Number(times)));
            const what = JSON.stringify(request.slice(0, 300));
            const writesBefore = store.writes.length;
            requestsSent++;
            const replies = parseReplies(await exchange(kv.base, Buffer.from(request)));
            for (const { status, body } of replies) {
              expect(status, `status of a reply to ${what}`).toBeLessThan(500);
              if (status >= 400) expect(typeof parseJson(body)?.err, `err of the ${status} to ${what}: ${body}`).toBe("string");
            }
            const putsAnsweredOk = replies.filter((r) => r.status === 200 && /^\{"err":"OK","version":\d+\}$/.test(r.body));
            const answered = JSON.stringify(replies.map((r) => `${r.status} ${r.body}`));
            expect(store.writes.length - writesBefore, `store writes after ${what}, answered ${answered}`).toBe(putsAnsweredOk.length);
            expect((await send(kv, { method: "GET", path: "/healthz", headers: {}, body: undefined }))?.status).toBe(200);
          }),
          {
            numRuns: RAW_RUNS,
            // Found by this test: a put followed on its connection by a byte Node's parser refuses is
            // applied, yet the only reply is the 400 for that byte; the put's 200 is lost.
            examples: [['PUT /v1/kv/raw HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{"value":"raw","version":0}x']],
          },
        );
      },
      120_000,
    );
  });
});
