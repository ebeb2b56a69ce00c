import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { MemoryStore } from "@kv/server";
import { describe, expect, it, onTestFinished } from "vitest";
import { startTestServer } from "./test-support/testing";

/** A raw connection to the test server, collecting what it answers and noting when it closes. */
async function rawConnection(base: string): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  const { port } = new URL(base);
  const socket = connect(Number(port), "127.0.0.1");
  await once(socket, "connect");
  let received = "";
  socket.on("data", (chunk) => (received += chunk));
  socket.on("error", () => {});
  const closed = once(socket, "close").then(() => undefined);
  onTestFinished(() => void socket.destroy());
  return { socket, received: () => received, closed };
}

/** Resolves when `closed` does, or rejects after `ms`: a bounded wait, not a measurement. */
const within = (closed: Promise<void>, ms: number, what: string) =>
  Promise.race([closed, sleep(ms).then(() => Promise.reject(new Error(`${what} was still open after ${ms} ms`)))]);

describe("slow clients (KV_HEADERS_TIMEOUT_MS, KV_REQUEST_TIMEOUT_MS)", () => {
  it("closes a connection dribbling its headers and one whose body never ends, while 50 requests in parallel are served", async () => {
    const kv = await startTestServer({ KV_HEADERS_TIMEOUT_MS: "1000", KV_REQUEST_TIMEOUT_MS: "2000" });
    onTestFinished(() => kv.close());

    // Slow-loris: a header byte a second, never done.
    const dribbler = await rawConnection(kv.base);
    const head = "PUT /v1/kv/slow HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nX-Pad: ";
    let sent = 0;
    const dribbling = setInterval(() => {
      if (!dribbler.socket.destroyed) dribbler.socket.write(head[sent++ % head.length] as string);
    }, 1_000);
    onTestFinished(() => clearInterval(dribbling));

    // A body promised, then never finished.
    const stalled = await rawConnection(kv.base);
    stalled.socket.write(
      'PUT /v1/kv/stalled HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"value":',
    );

    const replies = await Promise.all(Array.from({ length: 50 }, (_, i) => kv.put(`served-${i}`, { value: "v", version: 0 })));
    expect(replies.map((r) => r.status)).toEqual(Array.from({ length: 50 }, () => 200));

    await within(dribbler.closed, 6_000, "the dribbling connection");
    await within(stalled.closed, 6_000, "the stalled connection");
    for (const slow of [dribbler, stalled]) {
      expect(slow.received()).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
      expect(slow.received()).toContain('{"err":"ErrRequestTimeout","message":"the request did not arrive in time"}');
    }
    expect((await kv.get("slow")).status).toBe(404);
    expect((await kv.get("stalled")).status).toBe(404);
  });
});

describe("the connection cap (KV_MAX_CONNECTIONS)", () => {
  it("closes connections past the cap as they arrive, and serves again once one is free", async () => {
    const kv = await startTestServer({ KV_MAX_CONNECTIONS: "3" });
    onTestFinished(() => kv.close());
    const held = await Promise.all([1, 2, 3].map(() => rawConnection(kv.base)));
    await sleep(100); // the server has accepted the three
    const extra = await rawConnection(kv.base);
    extra.socket.write("GET /healthz HTTP/1.1\r\nHost: kv\r\n\r\n");
    await within(extra.closed, 5_000, "the connection past the cap");
    expect(extra.received()).toBe("");

    held[0]?.socket.destroy();
    await held[0]?.closed;
    await sleep(100);
    const next = await rawConnection(kv.base);
    next.socket.write("GET /healthz HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n\r\n");
    await within(next.closed, 5_000, "the connection after one was freed");
    expect(next.received()).toMatch(/^HTTP\/1\.1 200 /);
  });
});

describe("bad bytes pipelined after a request", () => {
  it("answer that request first, then refuse, in order, when the bad request is still arriving", async () => {
    const store = new MemoryStore();
    const kv = await startTestServer(
      {},
      {
        get: (key) => store.get(key),
        putIfVersion: async (...args) => (await sleep(200), store.putIfVersion(...args)), // still working when the bad bytes come
        deleteIfVersion: (...args) => store.deleteIfVersion(...args),
        close: () => store.close(),
      },
    );
    onTestFinished(() => kv.close());
    const connection = await rawConnection(kv.base);
    const body = '{"value":"v","version":0}';
    connection.socket.write(
      `PUT /v1/kv/first HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}` +
        "PUT /v1/kv/second HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    );
    await within(connection.closed, 5_000, "the connection");
    const replies = connection.received().split(/(?=HTTP\/1\.1 )/);
    expect(replies).toHaveLength(2);
    expect(replies[0]).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\{"err":"OK","version":1,"revision":1\}$/);
    expect(replies[1]).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*"err":"ErrBadRequest"/);
    expect(await store.get("first")).toEqual({ value: "v", version: 1, modRevision: 1, createRevision: 1 });
    expect(await store.get("second")).toBeUndefined();
  });
});
