import { readdirSync, readlinkSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { connect as tlsConnect } from "node:tls";
import { MemoryStore, type Store } from "@kv/server";
import { createTestCertificates, startServerProcess } from "@kv/testkit";
import type { FastifyInstance } from "fastify";
import { Pool } from "undici";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { type AppOptions, buildApp } from "./app";
import { parseConfig } from "./config";
import { CLOSING_GRACE_MS } from "./connections";

const HEADERS_TIMEOUT_MS = 1_000;
const REQUEST_TIMEOUT_MS = 2_000;
// Node checks the timeouts every quarter of the headers timeout here (see buildApp).
const TIMEOUT_CHECK_MS = HEADERS_TIMEOUT_MS / 4;
// What the issue allows once the server has given up: "a second or two". Connections promises
// LINGER_MS and one sweep (250 ms) more; the rest is room for a loaded machine.
const LET_GO_MS = 2_000;
const SMALL_BODY_LIMIT = { KV_MAX_VALUE_BYTES: "100" }; // the body limit is then 4 696 bytes

/** A kv app on a loopback port with the slow-client deadlines above; closed after the test. */
async function startServer(
  env: Record<string, string> = {},
  options: AppOptions = {},
  store: Store = new MemoryStore(),
): Promise<{ app: FastifyInstance; port: number }> {
  const config = parseConfig(
    { KV_LOG_LEVEL: "silent", KV_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS), KV_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS), ...env },
    [],
  );
  const app = await buildApp(config, store, options);
  const base = await app.listen({ host: "127.0.0.1", port: 0 });
  onTestFinished(() => app.close());
  return { app, port: Number(new URL(base).port) };
}

const serverConnections = (app: FastifyInstance) =>
  new Promise<number>((resolve, reject) => app.server.getConnections((err, count) => (err ? reject(err) : resolve(count))));

/** Resolves once the server holds `count` connections; rejects, saying how many, after `ms`. */
async function untilConnections(app: FastifyInstance, count: number, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  let now = await serverConnections(app);
  while (now !== count) {
    if (performance.now() > deadline) throw new Error(`the server held ${now} connections ${ms} ms on, expected ${count}`);
    await sleep(25);
    now = await serverConnections(app);
  }
}

/** Resolves once `count` long-poll reads wait (kv_waiters), bounded. */
async function untilWaiting(app: FastifyInstance, count: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await app.inject({ url: "/metrics" })).body.includes(`\nkv_waiters ${count}\n`)) return;
    await sleep(25);
  }
  throw new Error(`kv_waiters never reached ${count}`);
}

/**
 * A client that never reads: it connects (over TLS when given a CA, or raw TCP), sends `first`,
 * then one byte of `dribble` every `everyMs` for as long as its connection lasts. `received` reads,
 * at last, what arrived: it resumes the socket and resolves when the connection ends.
 */
async function silentClient(
  port: number,
  { first = "", dribble = "", everyMs = 200, ca }: { first?: string | Buffer; dribble?: string; everyMs?: number; ca?: string },
): Promise<{ socket: Socket; received: () => Promise<string> }> {
  const socket = ca === undefined ? connect(port, "127.0.0.1") : tlsConnect({ port, host: "127.0.0.1", ca });
  socket.on("error", () => {}); // the server may reset it: that is what is tested
  // A connection the server turns away may be reset before it is seen connected.
  await new Promise((resolve) => {
    socket.once(ca === undefined ? "connect" : "secureConnect", resolve);
    socket.once("close", resolve);
  });
  socket.pause(); // nothing is read until `received`
  if (first.length > 0) socket.write(first);
  let sent = 0;
  const dribbling = setInterval(() => {
    if (!socket.destroyed && dribble.length > 0) socket.write(dribble[sent++ % dribble.length] as string);
  }, everyMs);
  onTestFinished(() => {
    clearInterval(dribbling);
    socket.destroy();
  });
  const received = async () => {
    clearInterval(dribbling);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.resume();
    if (!socket.destroyed) await Promise.race([new Promise((resolve) => socket.once("close", resolve)), sleep(2_000)]);
    return Buffer.concat(chunks).toString("latin1");
  };
  return { socket, received };
}

/** Puts and gets one after another on one kept-alive connection until stopped; every reply must be 2xx. */
function normalClient(port: number, ca?: string): { stop: () => Promise<number[]> } {
  const pool = new Pool(`${ca === undefined ? "http" : "https"}://127.0.0.1:${port}`, { connections: 1, ...(ca !== undefined && { connect: { ca } }) });
  const statuses: number[] = [];
  let isStopped = false;
  const running = (async () => {
    for (let i = 0; !isStopped; i++) {
      const path = `/v1/kv/normal-${i}`;
      const put = await pool.request({ method: "PUT", path, headers: { "content-type": "application/json" }, body: '{"value":"v","version":0}' });
      await put.body.dump();
      const get = await pool.request({ method: "GET", path });
      await get.body.dump();
      statuses.push(put.statusCode, get.statusCode);
      await sleep(20);
    }
  })();
  return {
    stop: async () => {
      while (statuses.length < 10) await sleep(20); // served some, at least
      isStopped = true;
      await running;
      await pool.close();
      return statuses;
    },
  };
}

const header = (name: string) => `PUT /v1/kv/slow HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\n${name}`;

describe("connections the server gives up on are let go, whether or not the peer reads", () => {
  // Each client never reads and goes on sending: the server answers, ends its side, and lets go
  // within LET_GO_MS of giving up, holding only the normal client's connection.
  const paths: Array<[name: string, env: Record<string, string>, client: { first: string; dribble: string }, givesUpAfterMs: number, reply: RegExp]> = [
    ["headers that never end (KV_HEADERS_TIMEOUT_MS)", {}, { first: header("X-Slow: "), dribble: "a" }, HEADERS_TIMEOUT_MS + TIMEOUT_CHECK_MS, /^HTTP\/1\.1 408 /],
    ["a body that never ends (KV_REQUEST_TIMEOUT_MS)", {}, { first: `${header("Content-Length: 100000")}\r\n\r\n{`, dribble: " " }, REQUEST_TIMEOUT_MS + TIMEOUT_CHECK_MS, /^HTTP\/1\.1 408 /],
    ["a body over the limit (declared)", SMALL_BODY_LIMIT, { first: `${header("Content-Length: 100000")}\r\n\r\n{`, dribble: " " }, 0, /^HTTP\/1\.1 413 /],
    ["a body over the limit (chunked)", SMALL_BODY_LIMIT, { first: `${header("Transfer-Encoding: chunked")}\r\n\r\n2000\r\n${" ".repeat(8192)}\r\n`, dribble: " " }, 0, /^HTTP\/1\.1 413 /],
    ["a malformed request", {}, { first: "GARBAGE\r\n\r\n", dribble: "x" }, 0, /^HTTP\/1\.1 400 /],
  ];

  it.each(paths)("%s", async (_, env, client, givesUpAfterMs, reply) => {
    const { app, port } = await startServer(env);
    const normal = normalClient(port);
    await untilConnections(app, 1, 5_000);
    const silent = await silentClient(port, client);
    await untilConnections(app, 2, 5_000);
    await untilConnections(app, 1, givesUpAfterMs + LET_GO_MS);
    expect(await silent.received()).toMatch(reply);
    expect((await normal.stop()).every((status) => status === 200)).toBe(true);
  });

  it("refuses a connection past KV_MAX_CONNECTIONS at once, whether or not it reads", async () => {
    const { app, port } = await startServer({ KV_MAX_CONNECTIONS: "2" });
    const normal = normalClient(port);
    const holder = await silentClient(port, { first: header("X-Slow: "), dribble: "a" });
    await untilConnections(app, 2, 5_000);
    const extra = await silentClient(port, { first: "GET /healthz HTTP/1.1\r\nHost: kv\r\n\r\n", dribble: "x" });
    await sleep(100);
    expect(await serverConnections(app)).toBe(2);
    expect(await extra.received()).toBe("");
    await untilConnections(app, 1, HEADERS_TIMEOUT_MS + TIMEOUT_CHECK_MS + LET_GO_MS); // the holder, let go
    expect(await holder.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect((await normal.stop()).every((status) => status === 200)).toBe(true);
  });

  it("never applies a request whose body completes after its 408", async () => {
    const { app, port } = await startServer();
    const body = '{"value":"late","version":0}';
    const client = await silentClient(port, { first: `${header(`Content-Length: ${body.length}`)}\r\n\r\n{` });
    await sleep(REQUEST_TIMEOUT_MS + TIMEOUT_CHECK_MS + 100); // answered 408 by now, and lingering
    client.socket.write(body.slice(1));
    expect(await client.received()).toMatch(/^HTTP\/1\.1 408 [^]*"ErrRequestTimeout"/);
    const reply = await app.inject({ method: "GET", url: "/v1/kv/slow" });
    expect(reply.json()).toEqual({ err: "ErrNoKey" });
  });
});

describe("over TLS", () => {
  let certificates: ReturnType<typeof createTestCertificates>;
  beforeAll(() => {
    certificates = createTestCertificates("127.0.0.1");
  });
  const https = () => ({ https: { cert: certificates.cert, key: certificates.key } });

  it("lets go of a connection that never starts its handshake, one that stalls in it, and one whose headers never end", async () => {
    const { app, port } = await startServer({}, https());
    const normal = normalClient(port, certificates.ca);
    await untilConnections(app, 1, 5_000);
    await silentClient(port, {});
    // A ClientHello's record header promising 512 bytes, then one byte at a time.
    await silentClient(port, { first: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), dribble: "\0" });
    const slowHeaders = await silentClient(port, { first: header("X-Slow: "), dribble: "a", ca: certificates.ca });
    await untilConnections(app, 4, 5_000);
    // The handshake has the headers' deadline (KV_HEADERS_TIMEOUT_MS), checked by its own timer.
    await untilConnections(app, 1, HEADERS_TIMEOUT_MS + TIMEOUT_CHECK_MS + LET_GO_MS);
    expect(await slowHeaders.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect((await normal.stop()).every((status) => status === 200)).toBe(true);
  });
});

describe("shutdown", () => {
  it("answers what it can and lets go of every connection within a bound, though none of them reads", async () => {
    const store = new MemoryStore();
    const unclosedStore: Store = { get: (key) => store.get(key), putIfVersion: (...args) => store.putIfVersion(...args), close: async () => {} };
    const { app, port } = await startServer({ KV_HEADERS_TIMEOUT_MS: "60000", KV_REQUEST_TIMEOUT_MS: "60000" }, {}, unclosedStore);
    await store.putIfVersion("waited", "v", 0, undefined);
    const midHeaders = await silentClient(port, { first: header("X-Slow: "), dribble: "a" });
    const body = '{"value":"late","version":0}';
    const midBody = await silentClient(port, { first: `${header(`Content-Length: ${body.length}`)}\r\n\r\n{` });
    const waiting = await silentClient(port, { first: "GET /v1/kv/waited?waitVersion=1&waitMs=60000 HTTP/1.1\r\nHost: kv\r\n\r\n" });
    await untilConnections(app, 3, 5_000);
    await untilWaiting(app, 1);

    const closing = app.close();
    await sleep(CLOSING_GRACE_MS + 300); // given up on by now, and lingering
    midBody.socket.write(body.slice(1));
    const closed = await Promise.race([closing.then(() => true), sleep(LET_GO_MS).then(() => false)]);
    expect(closed).toBe(true);
    expect(await serverConnections(app)).toBe(0);
    expect(await waiting.received()).toMatch(/^HTTP\/1\.1 200 [^]*"value":"v"/); // answered at once, with the state then
    expect(await midHeaders.received()).toMatch(/^HTTP\/1\.1 503 [^]*"ErrUnavailable"/);
    expect(await midBody.received()).toMatch(/^HTTP\/1\.1 503 [^]*"ErrUnavailable"/);
    expect(await store.get("slow")).toBeUndefined(); // its body came too late to be applied
  });

  it("cuts TLS handshakes under way", async () => {
    const certificates = createTestCertificates("127.0.0.1");
    const { app, port } = await startServer({ KV_HEADERS_TIMEOUT_MS: "60000", KV_REQUEST_TIMEOUT_MS: "60000" }, { https: { cert: certificates.cert, key: certificates.key } });
    await silentClient(port, { first: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), dribble: "\0" });
    await untilConnections(app, 1, 5_000);
    const closed = await Promise.race([app.close().then(() => true), sleep(CLOSING_GRACE_MS + LET_GO_MS).then(() => false)]);
    expect(closed).toBe(true);
  });
});

describe("1 000 clients that never read, against KV_MAX_CONNECTIONS=1000", () => {
  it("hold every slot until their deadline, then leave neither a slot nor a file descriptor behind", async () => {
    const headersTimeoutMs = 5_000;
    const server = await startServerProcess({
      env: { KV_MAX_CONNECTIONS: "1000", KV_HEADERS_TIMEOUT_MS: String(headersTimeoutMs), KV_REQUEST_TIMEOUT_MS: String(headersTimeoutMs) },
    });
    onTestFinished(async () => void (await server.stop()));
    const sockets = () => readdirSync(`/proc/${server.pid}/fd`).filter((fd) => readlinkSafe(`/proc/${server.pid}/fd/${fd}`).startsWith("socket:")).length;
    // The harness's readiness check has closed its connection; the server's own sockets stay.
    let before = sockets();
    for (let i = 0; i < 20; i++) {
      await sleep(100);
      if (sockets() === before) break;
      before = sockets();
    }

    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(Array.from({ length: 100 }, () => silentClient(server.port, { first: header("X-Slow: "), dribble: "a", everyMs: 500 })));
    }
    await until(() => sockets() >= before + 1_000, 10_000, () => `the server holds ${sockets() - before} of the 1 000 connections`);
    const turnedAway = await silentClient(server.port, { first: "GET /healthz HTTP/1.1\r\nHost: kv\r\n\r\n" });
    expect(await turnedAway.received()).toBe(""); // every slot is taken

    // Each was answered 408 at its deadline, then let go, though it never read and still sends.
    const deadlineMs = headersTimeoutMs + headersTimeoutMs / 4 + LET_GO_MS + 2_000; // + room for 1 000 at once on 2 cores
    await until(() => sockets() <= before, deadlineMs, () => `${sockets() - before} of the server's sockets stayed behind`);
    const served = await silentClient(server.port, { first: "GET /healthz HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n\r\n" });
    expect(await served.received()).toMatch(/^HTTP\/1\.1 200 /);
  }, 60_000);
});

function readlinkSafe(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return ""; // closed between the listing and the read
  }
}

/** Resolves once `condition` holds, checking every 50 ms; rejects with `explain()` after `ms`. */
async function until(condition: () => boolean, ms: number, explain: () => string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${explain()} after ${ms} ms`);
    await sleep(50);
  }
}
