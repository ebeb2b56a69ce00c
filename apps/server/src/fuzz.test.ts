// Fuzzing (issue 7): generated requests, well-formed and not, against a real server on a loopback
// port. The server must never answer 5xx, must give every 4xx an `err`, must stay up, and its store
// must hold exactly what a Map model of the puts it accepted predicts (contract §2 and §4).
import { Socket } from "node:net";
import { KV_PREFIX, kvPath } from "@kv/rpc";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Reply, startTestServer, type TestServer } from "./test-support/testing";
import {
  MAX_VALUE_BYTES,
  ENV,
  RUNS,
  OPS_PER_RUN,
  RAW_RUNS,
  MIN_REQUESTS,
  SHRINK_BUDGET_MS,
  WriteLoggingStore,
  Long,
  type Entry,
  type Model,
  type PutBody,
  modelPut,
  modelDelete,
  recordedReply,
  type Records,
  keyOf,
  isValidKey,
  putBodyOf,
  opArb,
  type Op,
  putText,
} from "./test-support/fuzz-requests";

let requestsSent = 0;

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

const getReply = (entry: Entry | undefined) => {
  if (entry === undefined) return { err: "ErrNoKey" };
  const { value, version, modRevision, createRevision } = entry;
  return { err: "OK", value, version, modRevision, createRevision };
};
const isContractOutcome = (r: Reply) =>
  (r.status === 200 && r.body?.err === "OK") ||
  (r.status === 404 && r.body?.err === "ErrNoKey") ||
  (r.status === 409 && r.body?.err === "ErrVersion");

async function runOps(ops: Op[]): Promise<void> {
  const store = new WriteLoggingStore();
  const kv = await startTestServer(ENV, store);
  try {
    const model: Model = { entries: new Map(), revision: 0 };
    const records: Records = new Map();
    const touched = new Set<string>();
    const accepted = new Set<string>(); // keys of the writes the model accepted
    for (const op of ops) {
      const target = keyOf(op.path);
      const key = typeof target === "object" ? target.key : undefined;
      if (key !== undefined) touched.add(key);
      const text = op.body.kind === "put" ? putText(op.body.spec, key === undefined ? undefined : model.entries.get(key)) : op.body.text;
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
        typeof put === "object" &&
        /^application\/json(; charset=utf-8)?$/.test(op.contentType ?? "") &&
        !body.toString().startsWith("\ufeff");
      const isCanonical =
        isPlainPath && op.headers === null && ((op.method === "GET" && sent.body === undefined) || (op.method === "PUT" && isPlainPut));
      // An id recorded for another write is refused 400, changing nothing.
      const isReused = isCanonical && op.method === "PUT" && recordedReply(records, key as string, put as PutBody) === "reused";
      if (isReused)
        expect(reply, `the reply to ${what}, whose id was used for another write`).toMatchObject({
          status: 400,
          body: { err: "ErrBadRequest" },
        });
      else if (isCanonical)
        expect(isContractOutcome(reply), `a contract outcome for ${what}, got ${reply.status} ${JSON.stringify(reply.body)}`).toBe(true);

      let wrote: string[] = [];
      if (op.method === "PUT" && isContractOutcome(reply)) {
        expect(key !== undefined && isValidKey(key), `a valid key in ${what}`).toBe(true);
        expect(typeof put === "object" ? "valid" : put, `the put body of ${what}`).toBe("valid");
        const params = target !== "bad" ? (target?.query.replace(/^[?#]/, "").split("&") ?? []) : [];
        expect(
          params.filter((p) => p !== "" && !/^wait(Version|Ms)=/.test(p)),
          `unknown query parameters in ${what}`,
        ).toEqual([]);
        const before = model.entries.get(key as string);
        const expected = modelPut(model, records, key as string, put as PutBody);
        expect(reply.body, `reply to ${what}`).toEqual(expected);
        if (model.entries.get(key as string) !== before) wrote = [key as string];
      } else if (op.method === "GET" && isContractOutcome(reply)) {
        expect(key !== undefined && isValidKey(key), `a valid key in ${what}`).toBe(true);
        const entry = model.entries.get(key as string);
        expect(reply.body, `reply to ${what}`).toEqual(getReply(entry));
      } else if (op.method === "DELETE" && isContractOutcome(reply)) {
        expect(key !== undefined && isValidKey(key), `a valid key in ${what}`).toBe(true);
        const query = new URLSearchParams(target !== "bad" ? target?.query.replace(/^[?#]/, "") : "");
        const version = query.get("version");
        const id = query.get("id") ?? undefined;
        const expected = modelDelete(model, records, key as string, {
          version: version === null ? -1 : Number(version),
          ...(id !== undefined && { id }),
          retry: query.get("retry") === "true",
        });
        expect(reply.body, `reply to ${what}`).toEqual(expected);
        if (expected.err === "OK") wrote = [key as string];
      }
      // Only an accepted write that the model says changes the key may write, and only that key.
      expect(store.writes.slice(writesBefore), `store writes after ${what}`).toEqual(wrote);
      for (const k of wrote) accepted.add(k);
    }

    for (const key of touched) {
      const entry = model.entries.get(key);
      const reply = await send(kv, { method: "GET", path: kvPath(key), headers: {}, body: undefined });
      if (isValidKey(key)) {
        expect(reply?.body, `GET ${kvPath(key)} at the end`).toEqual(getReply(entry));
      } else {
        expect(reply?.status, `GET ${kvPath(key).slice(0, 300)} at the end`).toBe(400);
      }
      expect(await store.get(key), `the store's entry for ${JSON.stringify(key)}`).toEqual(entry);
    }
    expect(
      store.writes.filter((k) => !accepted.has(k)),
      "keys written that the model never accepted",
    ).toEqual([]);
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
      ...[
        "PUT /v1/kv/a b HTTP/1.1",
        "PRI * HTTP/2.0",
        "",
        "GET /v1/kv/%zz HTTP/1.1",
        "PUT /v1/kv/%ED%A0%80 HTTP/1.1",
        "PUT /v1/kv/\u00ff HTTP/1.1",
      ],
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
    ...[
      "NoColon",
      " Leading-Space: x",
      "Bad Name: x",
      "X: a\rb",
      "X: \u0000",
      "X: a\r\n b",
      "Xé: 1",
      ": empty-name",
      "Content-Length: abc",
    ],
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
  it("never answers 5xx, gives every 4xx an err, and changes the store only as a Map model of the accepted puts predicts", async () => {
    const before = requestsSent;
    await fc.assert(fc.asyncProperty(fc.array(opArb, OPS_PER_RUN), runOps), {
      numRuns: RUNS,
      plugins: [fc.interruptAfterTimeLimit(SHRINK_BUDGET_MS)],
    });
    expect(requestsSent - before).toBeGreaterThanOrEqual(MIN_REQUESTS);
  }, 120_000);

  describe("on a raw socket", () => {
    let kv: TestServer;
    let store: WriteLoggingStore;
    beforeAll(async () => {
      store = new WriteLoggingStore();
      kv = await startTestServer(ENV, store);
    });
    afterAll(() => kv.close());

    it("answers malformed HTTP with 4xx and an err, or closes the connection, writes only for puts it answered OK, and stays up", async () => {
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
          const putsAnsweredOk = replies.filter((r) => r.status === 200 && /^\{"err":"OK","version":\d+,"revision":\d+\}$/.test(r.body));
          const answered = JSON.stringify(replies.map((r) => `${r.status} ${r.body}`));
          expect(store.writes.length - writesBefore, `store writes after ${what}, answered ${answered}`).toBe(putsAnsweredOk.length);
          expect((await send(kv, { method: "GET", path: "/healthz", headers: {}, body: undefined }))?.status).toBe(200);
        }),
        {
          numRuns: RAW_RUNS,
          // Found by this test: a put followed on its connection by a byte Node's parser refuses is
          // applied, yet the only reply is the 400 for that byte; the put's 200 is lost.
          examples: [
            ['PUT /v1/kv/raw HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{"value":"raw","version":0}x'],
          ],
        },
      );
    }, 120_000);
  });
});
