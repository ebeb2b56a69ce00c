// The fuzz test's requests and its model of the server (contract §2, §4): the small limits it
// runs with, the fast-check arbitraries for methods, paths, headers and bodies, and the Map model
// that says what each accepted put must answer and write.
import { KV_PREFIX, MAX_PUT_ID_LENGTH } from "@kv/rpc";
import { type DeleteIfVersionResult, MemoryStore, type PutIfVersionResult, type PutOptions } from "@kv/server";
import fc from "fast-check";

// Small limits put their edges within reach of cheap requests: keys and values just under and
// over them, and bodies past the body limit (6 × the value limit + 4 KiB), cost a few KiB each.
export const MAX_KEY_BYTES = 64;
export const MAX_VALUE_BYTES = 1024;
export const ENV = {
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
export const RUNS = 60;
export const OPS_PER_RUN = { maxLength: 100, size: "max" } as const;
export const RAW_RUNS = 300;
export const MIN_REQUESTS = 2_000;
// Each shrinking step starts a server and replays up to 100 requests: the whole run, search and
// shrinking, stops after this (keeping what it found); the request count below fails a run cut short.
export const SHRINK_BUDGET_MS = 60_000;

/** A MemoryStore that notes each write it applies, so a write that no reply accounts for shows. */
export class WriteLoggingStore extends MemoryStore {
  readonly writes: string[] = [];

  override async putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options?: PutOptions,
  ): Promise<PutIfVersionResult> {
    const result = await super.putIfVersion(key, value, expectedVersion, putId, options);
    if (result.ok) this.writes.push(key);
    return result;
  }

  override async deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    id: string | undefined,
    options?: PutOptions,
  ): Promise<DeleteIfVersionResult> {
    const result = await super.deleteIfVersion(key, expectedVersion, id, options);
    if (result.ok) this.writes.push(key);
    return result;
  }
}

/** A long string that prints as the expression that builds it, so counterexamples stay readable. */
export class Long {
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
export const long = (unit: string, times: number) => new Long(`${JSON.stringify(unit)}.repeat(${times})`, unit.repeat(times));

// ---- The model: contract §2 over a Map ------------------------------------------------------

export interface Entry {
  value: string;
  version: number;
  modRevision: number;
  createRevision: number;
  putId?: string;
}
/** The keys, and the store revision: one per write applied. */
export interface Model {
  entries: Map<string, Entry>;
  revision: number;
}
export interface PutBody {
  value: string;
  version: number;
  id?: string;
  retry?: boolean;
}
export type PutReply = { err: "OK"; version: number; revision: number } | { err: "ErrNoKey" } | { err: "ErrVersion" };
/** The completion records the model keeps: id → the write it was decided for, and the decision. */
export type Records = Map<
  string,
  { kind: "put"; key: string; version: number; reply: PutReply } | { kind: "delete"; key: string; version: number; reply: DeleteReply }
>;
export type DeleteReply = { err: "OK"; revision: number } | { err: "ErrNoKey" } | { err: "ErrVersion" };
/** A delete's query, read as the server reads it (`version` -1: none named). */
export interface DeleteQuery {
  version: number;
  id?: string;
  retry?: boolean;
}

/** What the records say of a put: its recorded reply, "reused" (an id recorded for another write: 400), or nothing. */
export function recordedReply(records: Records, key: string, { version, id }: PutBody): PutReply | "reused" | undefined {
  const record = id === undefined ? undefined : records.get(id);
  if (record === undefined) return undefined;
  return record.kind === "put" && record.key === key && record.version === version ? record.reply : "reused";
}

/** Applies one accepted delete to `model` and `records`, and returns the reply it must get. */
export function modelDelete(model: Model, records: Records, key: string, { version, id, retry }: DeleteQuery): DeleteReply {
  const record = id === undefined ? undefined : records.get(id);
  if (record !== undefined) {
    if (record.kind === "delete" && record.key === key && record.version === version) return record.reply;
    throw new Error(`the model refuses a delete whose id ${id} was used for another write`);
  }
  const current = model.entries.get(key);
  let reply: DeleteReply;
  if (current === undefined) reply = { err: "ErrNoKey" };
  else if (version !== -1 && current.version !== version) reply = { err: "ErrVersion" };
  else {
    model.entries.delete(key);
    reply = { err: "OK", revision: ++model.revision };
  }
  if (id !== undefined && (reply.err === "OK" || retry === true)) records.set(id, { kind: "delete", key, version, reply });
  return reply;
}

/** Applies one accepted put to `model` and `records` as contract §2 says, and returns the reply it must get. */
export function modelPut(model: Model, records: Records, key: string, put: PutBody): PutReply {
  const recorded = recordedReply(records, key, put);
  if (recorded === "reused") throw new Error(`the model refuses a put whose id ${put.id} was used for another write`);
  if (recorded !== undefined) return recorded;
  const reply = tablePut(model, key, put);
  if (put.id !== undefined && (reply.err === "OK" || put.retry === true))
    records.set(put.id, { kind: "put", key, version: put.version, reply });
  return reply;
}

function tablePut(model: Model, key: string, { value, version, id }: PutBody): PutReply {
  const current = model.entries.get(key);
  if ((current?.version ?? 0) === version) {
    const revision = ++model.revision;
    const made = { value, version: version + 1, modRevision: revision, createRevision: current?.createRevision ?? revision };
    model.entries.set(key, id === undefined ? made : { ...made, putId: id });
    return { err: "OK", version: version + 1, revision };
  }
  if (current === undefined) return { err: "ErrNoKey" };
  // A retry of the put that made the current version: answered OK, nothing changes.
  if (id !== undefined && current.putId === id && current.version === version + 1) {
    return { err: "OK", version: current.version, revision: current.modRevision };
  }
  return { err: "ErrVersion" };
}

// ---- The mirror: what the server must make of a request, decided from its bytes alone ---------

/** A key route path's key, decoded as the router does (`?` and `#` end the path); `bad` when it cannot be. */
export function keyOf(path: string): { key: string; query: string } | "bad" | undefined {
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

export const isValidKey = (key: string) => key !== "" && Buffer.byteLength(key) <= MAX_KEY_BYTES;

/** The put the contract says `body` is, or why it is bad input (contract §4: strict JSON types, no extra fields). */
export function putBodyOf(contentType: string | undefined, body: string | Buffer | undefined): PutBody | string {
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
  const extra = Object.keys(fields).find((f) => !["value", "version", "id", "retry"].includes(f));
  if (extra !== undefined) return `extra field ${JSON.stringify(extra)}`;
  const { value, version, id, retry } = fields;
  if (typeof value !== "string" || !value.isWellFormed() || Buffer.byteLength(value) > MAX_VALUE_BYTES) return "bad value";
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 0) return "bad version";
  if ("retry" in fields && typeof retry !== "boolean") return "bad retry";
  const put: PutBody = { value, version };
  if ("retry" in fields) put.retry = retry as boolean;
  if (!("id" in fields)) return put;
  const idLength = typeof id === "string" ? [...id].length : 0;
  if (typeof id !== "string" || idLength < 1 || idLength > MAX_PUT_ID_LENGTH || !id.isWellFormed()) return "bad id";
  return { ...put, id };
}

// ---- Generated requests ----------------------------------------------------------------------

export const SMALL_KEYS = ["a", "b", "c"];
export const ODD_KEYS = [
  ...["__proto__", "constructor", "prototype", "toString", "hasOwnProperty", ".", "..", "...", "%2F", "%", "a/b", "/"],
  ...["?", "#", "a?b#c&d=e", "+", " ", ";", "ключ", "🔑", "e\u0301", "\u0000", "\u{10ffff}", "k".repeat(MAX_KEY_BYTES)],
  ...[
    "é".repeat(MAX_KEY_BYTES / 2),
    "k".repeat(MAX_KEY_BYTES + 1),
    "é".repeat(MAX_KEY_BYTES / 2 + 1),
    "x".repeat(MAX_KEY_BYTES * 3 + 1),
    "",
  ],
];
export const keyArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 6, arbitrary: fc.constantFrom(...SMALL_KEYS) },
  { weight: 3, arbitrary: fc.constantFrom(...ODD_KEYS) },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 6 }) },
);

export const percentBytes = (key: string, hex: (b: number) => string) => [...Buffer.from(key)].map((b) => `%${hex(b)}`).join("");
/** Ways to write a key as one path segment; `double` encodes it twice, which names another key. */
export const ENCODINGS = {
  component: encodeURIComponent,
  everyByte: (key: string) => percentBytes(key, (b) => b.toString(16).toUpperCase().padStart(2, "0")),
  everyByteLower: (key: string) => percentBytes(key, (b) => b.toString(16).padStart(2, "0")),
  // Sub-delimiters a path segment may carry as they are.
  minimal: (key: string) => encodeURIComponent(key).replace(/%(24|26|2B|2C|3A|3B|3D|40)/g, (m) => decodeURIComponent(m)),
  double: (key: string) => encodeURIComponent(encodeURIComponent(key)),
};
export const SUFFIXES = ["?", "#", "#frag", "?x=1", "?__proto__=1", "?a&b", "?%zz", "?waitVersion=0&waitMs=10", "?waitMs=abc"];
export const keyPathArb = fc
  .tuple(
    keyArb,
    fc.constantFrom(...(Object.keys(ENCODINGS) as Array<keyof typeof ENCODINGS>)),
    fc.oneof({ withCrossShrink: true }, { weight: 7, arbitrary: fc.constant("") }, { weight: 1, arbitrary: fc.constantFrom(...SUFFIXES) }),
  )
  .map(([key, encoding, suffix]) => KV_PREFIX + ENCODINGS[encoding](key) + suffix);
export const PATH_STARTS = [
  "/v1/kv/",
  "/v1/kv/",
  "/v1/kv",
  "/",
  "/v1/",
  "/v1/kv//",
  "/V1/KV/",
  "//v1/kv/",
  "/v1/./kv/",
  "/v1/kv/../kv/",
  "/v2/kv/",
];
export const PATH_PIECES = [
  ...[
    "a",
    "b",
    "%",
    "%2",
    "%zz",
    "%2F",
    "%2f",
    "%25",
    "%252F",
    "%2e%2e",
    "%E2%82",
    "%ED%A0%80",
    "%C0%AF",
    "%FF",
    "%00",
    "%7F",
    "%F0%9F%94%91",
  ],
  ...["?", "#", "&", "=", ";", ".", "..", "/", "\\", "~", "*", "|", "{", '"', "<", "é", "ÿ", "\x7f"],
];
export const rawPathArb = fc.oneof(
  { withCrossShrink: true },
  fc
    .tuple(fc.constantFrom(...PATH_STARTS), fc.array(fc.constantFrom(...PATH_PIECES), { maxLength: 6 }))
    .map(([start, pieces]) => start + pieces.join("")),
  fc.constantFrom("/healthz", "/readyz", "/metrics", "/openapi.json", "/healthz?x=1", "/v1", "/v1/kv/a/b"),
);

/** JSON text, nested, with the keys that trouble objects and the numbers that trouble parsers. */
export const jsonTextArb: fc.Arbitrary<string> = fc.letrec<{ node: string; object: string; array: string }>((tie) => ({
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

export const LAST_ID = Symbol("the id of the put that made the key's current version");
export const valueArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 8, arbitrary: fc.string({ unit: "grapheme", maxLength: 12 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<string | Long>("\ud800", "a\udfff", "\u0000", "\u2028", '"\\', long("€", MAX_VALUE_BYTES / 3 + 1)),
  },
  // At the value limit, one byte over, and at the limit but six times larger once JSON-escaped.
  { weight: 1, arbitrary: fc.constantFrom(long("v", MAX_VALUE_BYTES), long("v", MAX_VALUE_BYTES + 1), long("\u0001", MAX_VALUE_BYTES)) },
);
export const putSpecArb = fc.record({
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
  retry: fc.option(fc.boolean(), { freq: 2 }),
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
export type PutSpec = typeof putSpecArb extends fc.Arbitrary<infer T> ? T : never;

export const deep = (depth: number, open: string, close: string, inner = "") =>
  new Long(
    `${JSON.stringify(open)}.repeat(${depth}) + ${JSON.stringify(inner + close)}.repeat(${depth})`,
    open.repeat(depth) + inner + close.repeat(depth),
  );
export const bodyArb = fc.oneof(
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

export const CONTENT_TYPES = [
  ...[
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/json;charset=latin1",
    "application/json ; x=y",
    "text/plain",
    "text/json",
  ],
  ...[
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json+x",
    "application/*",
    "*/*",
    "",
  ],
  ...["application/json, text/plain", "application/octet-stream"],
];
export const someHeadersArb = fc.record(
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
export const headersArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 12, arbitrary: fc.constant(null) },
  { weight: 4, arbitrary: someHeadersArb },
  // Past Node's 16 KiB request head: the parser refuses it before Fastify sees it.
  { weight: 1, arbitrary: someHeadersArb.map((headers) => ({ ...headers, "x-huge": long("h", 17 * 1024) })) },
);

export const METHODS = ["HEAD", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "LOCK", "BREW", "FOO"];
export const opArb = fc.record({
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
export type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

/** The put body `spec` stands for, as JSON text, with versions and ids resolved against the model. */
export function putText(spec: PutSpec, current: Entry | undefined): string {
  const at = current?.version ?? 0;
  const version = typeof spec.version === "number" ? spec.version : { current: at, "current+1": at + 1, "current-1": at - 1 }[spec.version];
  const versionText = {
    plain: `${version}`,
    fraction: `${version}.0`,
    exponent: `${version}e0`,
    "negative zero": version === 0 ? "-0" : `${version}`,
  }[spec.versionSpelling];
  const id = spec.id === LAST_ID ? (current?.putId ?? "id-1") : spec.id;
  let fields: Array<[string, string]> = [
    ["value", JSON.stringify(String(spec.value))],
    ["version", versionText],
  ];
  if (id !== null) fields.push(["id", JSON.stringify(id)]);
  if (spec.retry !== null) fields.push(["retry", JSON.stringify(spec.retry)]);
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
