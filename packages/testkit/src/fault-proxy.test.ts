import { once } from "node:events";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { Client } from "undici";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { createFaultProxy, type FaultRates, type ProxyFaults } from "./fault-proxy";
import { type ServerProcess, startServerProcess } from "./server-process";

let server: ServerProcess;
beforeAll(async () => {
  server = await startServerProcess();
});
afterAll(async () => {
  expect(await server.stop()).toBe(0);
});

/** One request on a fresh connection: "200", "404", … or the failure's code. */
async function attempt(base: string, method: "GET" | "PUT", path: string, body?: object): Promise<string> {
  const client = new Client(base);
  try {
    const res = await client.request({
      method,
      path,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(500),
    });
    await res.body.dump();
    return String(res.statusCode);
  } catch (err) {
    const { code, name } = err as { code?: unknown; name: string };
    return typeof code === "string" ? code : name; // an abort's DOMException has a numeric code
  } finally {
    await client.destroy();
  }
}

async function startProxy(request: FaultRates = {}, reply: FaultRates = {}, connection: FaultRates = {}) {
  const proxy = await createFaultProxy({ target: { host: "127.0.0.1", port: server.port }, seed: 7, request, reply, connection });
  onTestFinished(() => proxy.close());
  return proxy;
}

/** The server still answers, straight, not through a proxy. */
const isUp = async () => (await attempt(server.url, "GET", "/healthz")) === "200";

describe("FaultProxy in front of the built server", () => {
  it("forwards everything when no fault is set", async () => {
    const proxy = await startProxy();
    expect(await attempt(proxy.url, "PUT", "/v1/kv/clean", { value: "v", version: 0 })).toBe("200");
    expect(await attempt(proxy.url, "GET", "/v1/kv/clean")).toBe("200");
    expect(proxy.stats).toMatchObject({ connections: 2, reset: 0, dropped: 0, blackholed: 0 });
  });

  it("resets connections: the client sees ECONNRESET, the server stays up", async () => {
    const proxy = await startProxy({ reset: 1 });
    const outcomes = await Promise.all(Array.from({ length: 5 }, () => attempt(proxy.url, "GET", "/v1/kv/x")));
    expect(
      outcomes.every((o) => o === "ECONNRESET"),
      outcomes.join(),
    ).toBe(true);
    expect(proxy.stats.reset).toBe(5);
    expect(await isUp()).toBe(true);
  });

  it("drops requests: the server never sees them", async () => {
    const proxy = await startProxy({ drop: 1 });
    const outcome = await attempt(proxy.url, "PUT", "/v1/kv/dropped", { value: "v", version: 0 });
    expect(outcome).toBe("UND_ERR_SOCKET");
    expect(proxy.stats.dropped).toBe(1);
    expect(await attempt(server.url, "GET", "/v1/kv/dropped")).toBe("404");
  });

  it("drops replies: the server applied the put, the client never learns it", async () => {
    const proxy = await startProxy({}, { drop: 1 });
    expect(await attempt(proxy.url, "PUT", "/v1/kv/reply-lost", { value: "v", version: 0 })).toBe("UND_ERR_SOCKET");
    expect(proxy.stats.dropped).toBe(1);
    expect(await attempt(server.url, "GET", "/v1/kv/reply-lost")).toBe("200");
  });

  it("blackholes connections: accepted, never answered, until the client gives up", async () => {
    const proxy = await startProxy({ blackhole: 1 });
    const outcomes = await Promise.all(Array.from({ length: 3 }, () => attempt(proxy.url, "GET", "/v1/kv/x")));
    expect(outcomes).toEqual(["TimeoutError", "TimeoutError", "TimeoutError"]);
    expect(proxy.stats.blackholed).toBe(3);
    expect(await isUp()).toBe(true);
  });

  it.each([
    ["reset", { reset: 1 }, "ECONNRESET", "reset"],
    ["close", { drop: 1 }, "UND_ERR_SOCKET", "dropped"],
    ["blackhole", { blackhole: 1 }, "TimeoutError", "blackholed"],
  ] as const)("can %s whole connections as they are accepted", async (_, connection, outcome, counter) => {
    const proxy = await startProxy({}, {}, connection);
    expect(await attempt(proxy.url, "PUT", "/v1/kv/per-connection", { value: "v", version: 0 })).toBe(outcome);
    expect(proxy.stats[counter]).toBe(1);
    expect(proxy.stats.forwarded).toBe(0);
    expect(await attempt(server.url, "GET", "/v1/kv/per-connection")).toBe("404");
  });

  it("applies new rates to a connection already open", async () => {
    const proxy = await startProxy();
    const client = new Client(proxy.url); // one keep-alive connection for both requests
    onTestFinished(() => client.destroy());
    const first = await client.request({ method: "GET", path: "/readyz" });
    await first.body.dump();
    expect(first.statusCode).toBe(200);
    const faults: ProxyFaults = { request: { reset: 1 } };
    proxy.setFaults(faults);
    await expect(client.request({ method: "GET", path: "/readyz" })).rejects.toMatchObject({ code: "ECONNRESET" });
    expect(proxy.stats).toMatchObject({ connections: 1, reset: 1 });
  });

  it("delays requests and replies and still delivers them", async () => {
    const proxy = await startProxy({ delay: 1, delayMs: 40 }, { delay: 1, delayMs: 40 });
    expect(await attempt(proxy.url, "PUT", "/v1/kv/late", { value: "v", version: 0 })).toBe("200");
    expect(proxy.stats.delayed).toBeGreaterThanOrEqual(2); // the request and its reply, at least
    expect(proxy.stats).toMatchObject({ reset: 0, dropped: 0, blackholed: 0 });
    expect(await attempt(server.url, "GET", "/v1/kv/late")).toBe("200");
  });

  it("can delay whole connections: every request on it is answered, late", async () => {
    const proxy = await startProxy({}, {}, { delay: 1, delayMs: 30 });
    const client = new Client(proxy.url); // one keep-alive connection for both requests
    onTestFinished(() => client.destroy());
    const put = await client.request({
      method: "PUT",
      path: "/v1/kv/slow-connection",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ value: "v", version: 0 }),
    });
    expect(await put.body.json()).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    const get = await client.request({ method: "GET", path: "/v1/kv/slow-connection" });
    expect(await get.body.json()).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(proxy.stats).toMatchObject({ connections: 1, delayed: 1, reset: 0, dropped: 0, blackholed: 0 });
    expect(proxy.stats.forwarded).toBeGreaterThanOrEqual(4); // two requests and two replies went through
  });

  it("keeps the order of chunks delayed by different amounts, and delivers a reply sent just before the server closes", async () => {
    // The connection delays every chunk; about half the request's chunks are delayed again on top.
    const proxy = await startProxy({ delay: 0.5, delayMs: 40 }, {}, { delay: 1, delayMs: 20 });
    const body = JSON.stringify({ value: "in order", version: 0 });
    const pieces = [
      "PUT /v1/kv/ordered HTTP/1.1\r\nHost: kv\r\n",
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
      body.slice(0, 10),
      body.slice(10),
    ];
    const socket = connect(proxy.port, "127.0.0.1");
    onTestFinished(() => void socket.destroy());
    await once(socket, "connect");
    let reply = "";
    socket.on("data", (chunk: Buffer) => (reply += chunk));
    const closed = once(socket, "close");
    for (const piece of pieces) {
      socket.write(piece);
      await sleep(5); // separate chunks, most likely; the check below holds either way
    }
    await closed; // the server answers, then closes: the delayed reply still arrives first
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(proxy.stats.delayed).toBeGreaterThanOrEqual(1);
    const stored = await fetch(`${server.url}/v1/kv/ordered`);
    expect(await stored.json()).toMatchObject({ err: "OK", value: "in order", version: 1 });
  });

  it("closes on Symbol.asyncDispose, as `await using` does", async () => {
    const proxy = await startProxy();
    const { url } = proxy;
    await proxy[Symbol.asyncDispose]();
    expect(await attempt(url, "GET", "/healthz")).toBe("ECONNREFUSED");
  });

  it("mixes faults at rates changed while it runs, and every kind shows up while the server stays up", async () => {
    const proxy = await startProxy();
    proxy.setFaults({ request: { reset: 0.2, drop: 0.2, blackhole: 0.1, delay: 0.2, delayMs: 5 }, reply: { drop: 0.1 } });
    const outcomes = await Promise.all(
      Array.from({ length: 60 }, (_, i) => attempt(proxy.url, "PUT", `/v1/kv/mix-${i}`, { value: "v", version: 0 })),
    );
    expect(proxy.stats.reset).toBeGreaterThan(0);
    expect(proxy.stats.dropped).toBeGreaterThan(0);
    expect(proxy.stats.blackholed).toBeGreaterThan(0);
    expect(proxy.stats.delayed).toBeGreaterThan(0);
    expect(outcomes.filter((o) => o === "200").length).toBeGreaterThan(0);
    proxy.setFaults({ request: {}, reply: {} });
    expect(await attempt(proxy.url, "GET", "/v1/kv/mix-0")).toMatch(/^(200|404)$/);
    expect(await isUp()).toBe(true);
  });
});
