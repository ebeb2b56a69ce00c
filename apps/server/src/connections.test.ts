import { readdirSync, readlinkSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { connect as tlsConnect } from "node:tls";
import { kvPath } from "@kv/rpc";
import { MemoryStore, type Store } from "@kv/server";
import { createTestCertificates, startServerProcess, type TestCertificates } from "@kv/testkit";
import { Pool } from "undici";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { CLOSING_GRACE_MS } from "./connections";
import { startTestServer, type TestServer, waitUntil } from "./test-support/testing";

const HEADERS_TIMEOUT_MS = 1_000;
const REQUEST_TIMEOUT_MS = 2_000;
// Node checks the deadlines every quarter of the headers timeout (buildApp), at most a second.
const checkIntervalMs = (headersTimeoutMs: number) => Math.max(100, Math.min(1_000, headersTimeoutMs / 4));
// "A second or two" once the server gives up: Connections promises a second and one sweep
// (250 ms) more; the rest is room for a loaded 2-core machine.
const LET_GO_MS = 2_500;
const SMALL_BODY_LIMIT = { KV_MAX_VALUE_BYTES: "100" }; // the body limit is then 4 696 bytes
const BIG_VALUE = "v".repeat(1_000_000);

let certificates: TestCertificates;
beforeAll(() => {
  certificates = createTestCertificates("127.0.0.1");
});

type Transport = "HTTP" | "HTTPS";

interface KvUnderTest extends TestServer {
  port: number;
  /** The server's side of each connection, by the client's port (over TLS: the TLS socket, once its handshake is done). */
  serverSides: Map<number, Socket>;
}

/** A kv app on a loopback port with the deadlines above (unless `env` says otherwise); closed after the test. */
async function startServer(transport: Transport, env: Record<string, string> = {}, store: Store = new MemoryStore()): Promise<KvUnderTest> {
  const tls = transport === "HTTPS" ? { https: { cert: certificates.cert, key: certificates.key }, ca: certificates.ca } : {};
  const kv = await startTestServer(
    { KV_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS), KV_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS), ...env },
    store,
    tls,
  );
  onTestFinished(() => kv.close());
  const serverSides = new Map<number, Socket>();
  const note = (socket: Socket) => socket.remotePort !== undefined && serverSides.set(socket.remotePort, socket);
  kv.app.server.on("connection", note);
  kv.app.server.on("secureConnection", note);
  return { ...kv, port: Number(new URL(kv.base).port), serverSides };
}

/**
 * Resolves once the server has destroyed its side of `client`'s connection, while the client
 * has read nothing and closed nothing; rejects after `ms`.
 */
async function untilLetGo(kv: KvUnderTest, client: RawClient, ms: number): Promise<void> {
  const serverSide = () => kv.serverSides.get(client.socket.localPort as number);
  await waitUntil(
    () => serverSide() !== undefined,
    5_000,
    () => "the server never accepted the connection",
  );
  await waitUntil(
    () => serverSide()?.destroyed === true,
    ms,
    () => "the server still held the connection",
  );
}

const connectionsOf = (kv: TestServer) =>
  new Promise<number>((resolve, reject) => kv.app.server.getConnections((err, count) => (err ? reject(err) : resolve(count))));

/** Resolves once the server holds `count` connections; rejects, saying how many, after `ms`. */
const untilConnections = (kv: TestServer, count: number, ms: number) =>
  waitUntil(
    async () => (await connectionsOf(kv)) === count,
    ms,
    async () => `the server held ${await connectionsOf(kv)} connections, not ${count},`,
  );

/** Resolves once `count` long-poll reads wait (kv_waiters). */
const untilWaiting = (kv: TestServer, count: number) =>
  waitUntil(
    async () => (await kv.request("GET", "/metrics")).body.includes(`\nkv_waiters ${count}\n`),
    5_000,
    () => `kv_waiters never reached ${count}`,
  );

interface RawClient {
  socket: Socket;
  /** What arrived so far (a client that reads) or nothing until `closed` (one that never reads). */
  received(): string;
  /** Reads what is left, and resolves with all that arrived once the server has closed the connection; rejects if it has not within 5 s. */
  closed(): Promise<string>;
}

/**
 * A raw client, over TLS on `transport` HTTPS: it sends `first`, then one character of `dribble`
 * every `everyMs` for as long as its connection lasts. Unless `reads`, it reads nothing until
 * `closed` is called: a client that never reads. One that reads keeps sending after the server
 * has ended its side.
 */
async function rawClient(
  port: number,
  {
    transport = "HTTP",
    first = "",
    dribble = "",
    everyMs = 200,
    reads = false,
  }: { transport?: Transport; first?: string | Buffer; dribble?: string; everyMs?: number; reads?: boolean },
): Promise<RawClient> {
  // One that reads keeps its side open when the server ends its own, to go on sending as an attacker would.
  const options = { port, host: "127.0.0.1", allowHalfOpen: reads };
  const socket = transport === "HTTP" ? connect(options) : tlsConnect({ ...options, ca: certificates.ca });
  socket.on("error", () => {}); // the server may reset it: that is what is tested
  const isClosed = new Promise((resolve) => socket.once("close", resolve));
  // A connection the server turns away may be reset before it is seen connected.
  await Promise.race([new Promise((resolve) => socket.once(transport === "HTTP" ? "connect" : "secureConnect", resolve)), isClosed]);
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  if (!reads) socket.pause();
  if (first.length > 0) socket.write(first);
  let sent = 0;
  const dribbling = setInterval(() => {
    if (!socket.destroyed && dribble.length > 0) socket.write(dribble[sent++ % dribble.length] as string);
  }, everyMs);
  onTestFinished(() => {
    clearInterval(dribbling);
    socket.destroy();
  });
  const received = () => Buffer.concat(chunks).toString("latin1");
  return {
    socket,
    received,
    closed: async () => {
      clearInterval(dribbling);
      if (socket.readableEnded) socket.end();
      else socket.once("end", () => socket.end());
      socket.resume();
      const hasClosed = await Promise.race([isClosed.then(() => true), sleep(5_000).then(() => false)]);
      if (!hasClosed) throw new Error(`the server did not close the connection; it sent ${JSON.stringify(received().slice(0, 200))}`);
      return received();
    },
  };
}

/** Puts and gets one after another on one kept-alive connection until stopped; resolves with every status. */
function normalClient(kv: { base: string }, transport: Transport): { stop: () => Promise<number[]> } {
  const pool = new Pool(kv.base, { connections: 1, ...(transport === "HTTPS" && { connect: { ca: certificates.ca } }) });
  const statuses: number[] = [];
  let isStopped = false;
  const running = (async () => {
    for (let i = 0; !isStopped; i++) {
      const path = `/v1/kv/normal-${i}`;
      const put = await pool.request({
        method: "PUT",
        path,
        headers: { "content-type": "application/json" },
        body: '{"value":"v","version":0}',
      });
      await put.body.dump();
      const get = await pool.request({ method: "GET", path });
      await get.body.dump();
      statuses.push(put.statusCode, get.statusCode);
      await sleep(20);
    }
  })();
  return {
    stop: async () => {
      await waitUntil(
        () => statuses.length >= 10,
        10_000,
        () => `the normal client was answered ${statuses.length} times`,
      );
      isStopped = true;
      await running;
      await pool.close();
      return statuses;
    },
  };
}

const put = (key: string, rest: string) => `PUT ${kvPath(key)} HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\n${rest}`;
const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: kv\r\n\r\n`;

describe.each(["HTTP", "HTTPS"] as const)(
  "over %s, a connection the server gives up on is let go, whether or not the peer reads",
  (transport) => {
    // Each client never reads and goes on sending: the server answers, and lets go within
    // LET_GO_MS of giving up, serving a normal client all along.
    const check = checkIntervalMs(HEADERS_TIMEOUT_MS);
    const paths: Array<
      [name: string, env: Record<string, string>, client: { first: string; dribble: string }, givesUpAfterMs: number, reply: RegExp]
    > = [
      [
        "headers that never end (408)",
        {},
        { first: put("slow", "X-Slow: "), dribble: "a" },
        HEADERS_TIMEOUT_MS + check,
        /^HTTP\/1\.1 408 /,
      ],
      [
        "a body that never ends (408)",
        {},
        { first: `${put("slow", "Content-Length: 100000")}\r\n\r\n{`, dribble: " " },
        REQUEST_TIMEOUT_MS + check,
        /^HTTP\/1\.1 408 /,
      ],
      [
        "a declared body over the limit (413)",
        SMALL_BODY_LIMIT,
        { first: `${put("slow", "Content-Length: 100000")}\r\n\r\n{`, dribble: " " },
        0,
        /^HTTP\/1\.1 413 /,
      ],
      [
        "a chunked body over the limit (413)",
        SMALL_BODY_LIMIT,
        { first: `${put("slow", "Transfer-Encoding: chunked")}\r\n\r\n2000\r\n${" ".repeat(8192)}\r\n`, dribble: " " },
        0,
        /^HTTP\/1\.1 413 /,
      ],
      ["a malformed request (400)", {}, { first: "GARBAGE\r\n\r\n", dribble: "x" }, 0, /^HTTP\/1\.1 400 /],
    ];

    it.each(paths)("answers %s and lets go", async (_, env, client, givesUpAfterMs, reply) => {
      const kv = await startServer(transport, env);
      const normal = normalClient(kv, transport);
      await untilConnections(kv, 1, 5_000);
      const neverReading = await rawClient(kv.port, { transport, ...client });
      await untilLetGo(kv, neverReading, givesUpAfterMs + LET_GO_MS);
      await untilConnections(kv, 1, LET_GO_MS); // only the normal client's is left
      expect(await neverReading.closed()).toMatch(reply);
      expect(await kv.store.get("slow")).toBeUndefined();
      expect((await normal.stop()).every((status) => status === 200)).toBe(true);
    });

    it("lets go of a client that does not read the replies a refusal waits behind", async () => {
      const kv = await startServer(transport);
      await kv.store.putIfVersion("big", BIG_VALUE, 0, undefined);
      const normal = normalClient(kv, transport);
      await untilConnections(kv, 1, 5_000);
      const neverReading = await rawClient(kv.port, { transport, first: `${get(kvPath("big")).repeat(10)}GARBAGE\r\n\r\n` });
      await untilLetGo(kv, neverReading, LET_GO_MS);
      expect(await neverReading.closed()).toMatch(/^HTTP\/1\.1 200 /);
      expect((await normal.stop()).every((status) => status === 200)).toBe(true);
    });

    it("turns a connection away past KV_MAX_CONNECTIONS at once, whether or not it reads", async () => {
      const kv = await startServer(transport, { KV_MAX_CONNECTIONS: "2" });
      const normal = normalClient(kv, transport);
      await untilConnections(kv, 1, 5_000);
      const holder = await rawClient(kv.port, { transport, first: put("slow", "X-Slow: "), dribble: "a" });
      await untilConnections(kv, 2, 5_000);
      const extra = await rawClient(kv.port, { transport, first: get("/healthz"), dribble: "x" });
      expect(await extra.closed()).toBe("");
      await untilLetGo(kv, holder, HEADERS_TIMEOUT_MS + check + LET_GO_MS);
      expect(await holder.closed()).toMatch(/^HTTP\/1\.1 408 /);
      expect((await normal.stop()).every((status) => status === 200)).toBe(true);
    });
  },
);

describe("replies the client does not read", () => {
  it("end their connection once they stop leaving: after KV_REQUEST_TIMEOUT_MS and the time their size needs at 64 KiB/s", async () => {
    const kv = await startServer("HTTP");
    const value = "v".repeat(400_000);
    await kv.store.putIfVersion("big", value, 0, undefined);
    // 16 MB of replies: more than every buffer between server and client can hold.
    const neverReading = await rawClient(kv.port, { first: get(kvPath("big")).repeat(40) });
    await untilLetGo(kv, neverReading, REQUEST_TIMEOUT_MS + (value.length / (64 * 1024)) * 1_000 + LET_GO_MS + 5_000);
  }, 30_000);

  it("keep their connection while the client reads, however slowly (16 MB at 4 MB/s: more than the socket buffers hold for longer than KV_REQUEST_TIMEOUT_MS)", async () => {
    const kv = await startServer("HTTP", { KV_MAX_VALUE_BYTES: String(16_000_000) });
    const value = "v".repeat(16_000_000);
    await kv.store.putIfVersion("big", value, 0, undefined);
    const reader = await rawClient(kv.port, { first: get(kvPath("big")) });
    let received = 0;
    while (received <= value.length) {
      const chunk: Buffer | null = reader.socket.read(256 * 1024) ?? reader.socket.read();
      if (chunk === null) {
        if (reader.socket.destroyed) break; // cut off
        await sleep(50);
        continue;
      }
      received += chunk.length;
      await sleep(64); // 256 KB every 64 ms: about 4 MB/s
    }
    expect(received).toBeGreaterThan(value.length); // the headers and the whole value
  }, 30_000);
});

describe("a request refused 408 is never applied", () => {
  const body = '{"value":"late","version":0}';
  const timedOut = /^HTTP\/1\.1 408 [^]*"ErrRequestTimeout"/;

  it("when its headers, and then its body, arrive after the 408", async () => {
    const kv = await startServer("HTTP");
    const client = await rawClient(kv.port, { first: put("late", ""), reads: true });
    await waitUntil(
      () => timedOut.test(client.received()),
      HEADERS_TIMEOUT_MS + LET_GO_MS,
      () => "no 408",
    );
    client.socket.write(`Content-Length: ${body.length}\r\n\r\n${body}`);
    await client.closed();
    expect(await kv.store.get("late")).toBeUndefined();
  });

  it("when its body arrives after the 408", async () => {
    const kv = await startServer("HTTP");
    const client = await rawClient(kv.port, { first: `${put("late", `Content-Length: ${body.length}`)}\r\n\r\n{`, reads: true });
    await waitUntil(
      () => timedOut.test(client.received()),
      REQUEST_TIMEOUT_MS + LET_GO_MS,
      () => "no 408",
    );
    client.socket.write(body.slice(1));
    await client.closed();
    expect(await kv.store.get("late")).toBeUndefined();
  });

  it("when its 408 waits for a long-poll before it on the connection, and its body arrives meanwhile", async () => {
    const kv = await startServer("HTTP");
    await kv.store.putIfVersion("watched", "a", 0, undefined);
    const client = await rawClient(kv.port, {
      first: `${get(`${kvPath("watched")}?waitVersion=1&waitMs=60000`)}${put("late", `Content-Length: ${body.length}`)}\r\n\r\n{`,
      reads: true,
    });
    await untilWaiting(kv, 1);
    await sleep(REQUEST_TIMEOUT_MS + checkIntervalMs(HEADERS_TIMEOUT_MS) + 1_000); // the put timed out: its 408 waits for the long-poll
    client.socket.write(body.slice(1));
    await sleep(100);
    expect(await kv.put("watched", { value: "b", version: 1 })).toMatchObject({ status: 200 });
    const replies = (await client.closed()).split(/(?=HTTP\/1\.1 )/);
    expect(replies).toHaveLength(2);
    expect(replies[0]).toMatch(/^HTTP\/1\.1 200 [^]*"value":"b"/);
    expect(replies[1]).toMatch(timedOut);
    expect(await kv.store.get("late")).toBeUndefined();
  });
});

describe("replies on one connection keep the order of its requests", () => {
  it("answers a CONNECT after the long-poll before it", async () => {
    const kv = await startServer("HTTP");
    await kv.store.putIfVersion("watched", "a", 0, undefined);
    const client = await rawClient(kv.port, {
      first: `${get(`${kvPath("watched")}?waitVersion=1&waitMs=60000`)}CONNECT kv:443 HTTP/1.1\r\nHost: kv\r\n\r\n`,
      reads: true,
    });
    await untilWaiting(kv, 1);
    expect(await kv.put("watched", { value: "b", version: 1 })).toMatchObject({ status: 200 });
    const replies = (await client.closed()).split(/(?=HTTP\/1\.1 )/);
    expect(replies).toHaveLength(2);
    expect(replies[0]).toMatch(/^HTTP\/1\.1 200 [^]*"value":"b"/);
    expect(replies[1]).toMatch(/^HTTP\/1\.1 400 [^]*CONNECT is not supported/);
  });
});

describe("shutdown", () => {
  it("answers what it can and lets go of every connection within a bound, though none of them reads", async () => {
    const store = new MemoryStore();
    const unclosedStore: Store = {
      get: (key) => store.get(key),
      putIfVersion: (...args) => store.putIfVersion(...args),
      deleteIfVersion: (...args) => store.deleteIfVersion(...args),
      close: async () => {},
    };
    const kv = await startServer("HTTP", { KV_HEADERS_TIMEOUT_MS: "60000", KV_REQUEST_TIMEOUT_MS: "60000" }, unclosedStore);
    await store.putIfVersion("waited", "v", 0, undefined);
    const midHeaders = await rawClient(kv.port, { first: put("slow", "X-Slow: "), dribble: "a" });
    const body = '{"value":"late","version":0}';
    // This one reads, to send the rest of its body once refused.
    const midBody = await rawClient(kv.port, { first: `${put("slow", `Content-Length: ${body.length}`)}\r\n\r\n{`, reads: true });
    const waiting = await rawClient(kv.port, { first: get(`${kvPath("waited")}?waitVersion=1&waitMs=60000`) });
    await untilConnections(kv, 3, 5_000);
    await untilWaiting(kv, 1);

    const closing = kv.app.close();
    await waitUntil(
      () => midBody.received().length > 0,
      CLOSING_GRACE_MS + LET_GO_MS,
      () => "the request still arriving was not refused",
    );
    midBody.socket.write(body.slice(1));
    await Promise.race([closing, sleep(LET_GO_MS).then(() => Promise.reject(new Error("the server was still closing")))]);
    expect(await connectionsOf(kv)).toBe(0);
    expect(await waiting.closed()).toMatch(/^HTTP\/1\.1 200 [^]*"value":"v"/); // answered at once, with the state then
    expect(await midHeaders.closed()).toMatch(/^HTTP\/1\.1 503 [^]*"ErrUnavailable"/);
    expect(await midBody.closed()).toMatch(/^HTTP\/1\.1 503 [^]*"ErrUnavailable"/);
    expect(await store.get("slow")).toBeUndefined(); // its body came too late to be applied
  });

  it("over HTTPS, cuts handshakes under way and refuses a request still arriving", async () => {
    const kv = await startServer("HTTPS", { KV_HEADERS_TIMEOUT_MS: "60000", KV_REQUEST_TIMEOUT_MS: "60000" });
    // A ClientHello's record header promising 512 bytes, then a byte at a time.
    const handshaking = await rawClient(kv.port, { first: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), dribble: "\0" });
    const midHeaders = await rawClient(kv.port, { transport: "HTTPS", first: put("slow", "X-Slow: "), dribble: "a" });
    await untilConnections(kv, 2, 5_000);
    await Promise.race([
      kv.app.close(),
      sleep(CLOSING_GRACE_MS + LET_GO_MS + 1_000).then(() => Promise.reject(new Error("the server was still closing"))),
    ]);
    expect(await handshaking.closed()).not.toMatch(/^HTTP/);
    expect(await midHeaders.closed()).toMatch(/^HTTP\/1\.1 503 /);
  });
});

describe("1 000 clients that never read, against KV_MAX_CONNECTIONS=1000", () => {
  it("hold every slot until their deadline, then leave neither a slot nor a file descriptor behind", async () => {
    const headersTimeoutMs = 8_000; // all 1 000 connect well within it
    const server = await startServerProcess({
      env: { KV_MAX_CONNECTIONS: "1000", KV_HEADERS_TIMEOUT_MS: String(headersTimeoutMs), KV_REQUEST_TIMEOUT_MS: String(headersTimeoutMs) },
    });
    onTestFinished(async () => void (await server.stop()));
    const sockets = () =>
      readdirSync(`/proc/${server.pid}/fd`).filter((fd) => readlinkOrEmpty(`/proc/${server.pid}/fd/${fd}`).startsWith("socket:")).length;
    // The harness's readiness check has closed its connection; the server's own sockets stay.
    let before = sockets();
    for (let i = 0; i < 20; i++) {
      await sleep(100);
      if (sockets() === before) break;
      before = sockets();
    }

    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(
        Array.from({ length: 100 }, () => rawClient(server.port, { first: put("slow", "X-Slow: "), dribble: "a", everyMs: 500 })),
      );
    }
    await waitUntil(
      () => sockets() >= before + 1_000,
      10_000,
      () => `the server holds ${sockets() - before} of the 1 000 connections`,
    );
    const turnedAway = await rawClient(server.port, { first: get("/healthz") });
    expect(await turnedAway.closed()).toBe(""); // every slot is taken

    // Each was answered 408 at its deadline, then let go, though it never read and still sends.
    const deadlineMs = headersTimeoutMs + checkIntervalMs(headersTimeoutMs) + LET_GO_MS + 2_000; // + room for 1 000 at once on 2 cores
    await waitUntil(
      () => sockets() <= before,
      deadlineMs,
      () => `${sockets() - before} of the server's sockets stayed behind`,
    );
    const served = await rawClient(server.port, { first: "GET /healthz HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n\r\n" });
    expect(await served.closed()).toMatch(/^HTTP\/1\.1 200 /);
  }, 60_000);
});

function readlinkOrEmpty(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return ""; // closed between the listing and the read
  }
}
