import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { GetResult, PutResult } from "@kv/rpc";
import { assertLinearizable, createFaultProxy, recordHistory, type ServerProcess, startServerProcess, testSeed } from "@kv/testkit";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { type Clerk, createClerk } from "./clerk";

let server: ServerProcess;
beforeAll(async () => {
  server = await startServerProcess();
});
afterAll(() => server.stop());

function clerkFor(endpoints: string[], options: Partial<Parameters<typeof createClerk>[0]> = {}): Clerk {
  const clerk = createClerk({ endpoints, attemptTimeoutMs: 1_000, backoff: { baseMs: 5, maxMs: 100 }, ...options });
  onTestFinished(() => clerk.close());
  return clerk;
}

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

describe("createClerk over HTTP", () => {
  it("gets and puts against the built server, keys . and .. included", async () => {
    const clerk = clerkFor([server.url]);
    for (const key of ["http-basic", ".", "..", "a/b", "ключ"]) {
      expect(await clerk.get(key)).toEqual({ err: "ErrNoKey" });
      expect(await clerk.put(key, `v of ${key}`, 0)).toEqual({ err: "OK", version: 1 });
      expect(await clerk.put(key, "late", 0)).toEqual({ err: "ErrVersion" });
      expect(await clerk.get(key)).toEqual({ err: "OK", value: `v of ${key}`, version: 1 });
    }
    expect(await clerk.put("http-absent", "v", 3)).toEqual({ err: "ErrNoKey" });
  });

  it("serves many concurrent callers from one clerk", async () => {
    const clerk = clerkFor([server.url]);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => clerk.put(`http-many-${i}`, "v", 0)));
    expect(results.every((r) => r.err === "OK")).toBe(true);
  });

  it("fails over from a dead first endpoint to a live second one", async () => {
    const clerk = clerkFor([`http://127.0.0.1:${await deadPort()}`, server.url]);
    expect(await clerk.put("http-failover", "v", 0)).toEqual({ err: "OK", version: 1 });
    expect(await clerk.get("http-failover")).toEqual({ err: "OK", value: "v", version: 1 });
  });

  it("rejects a value over the server's limit with ERR_KV_TOO_LARGE and a bad key with ERR_KV_BAD_REQUEST", async () => {
    const small = await startServerProcess({ env: { KV_MAX_VALUE_BYTES: "4", KV_MAX_KEY_BYTES: "8" } });
    onTestFinished(async () => void (await small.stop()));
    const clerk = clerkFor([small.url]);
    await expect(clerk.put("k", "12345", 0)).rejects.toMatchObject({ name: "KvError", code: "ERR_KV_TOO_LARGE" });
    await expect(clerk.get("123456789")).rejects.toMatchObject({ code: "ERR_KV_BAD_REQUEST" });
  });

  it("sends the bearer token, and rejects a wrong one with ERR_KV_UNAUTHORIZED", async () => {
    const secured = await startServerProcess({ env: { KV_AUTH_TOKEN: "t0ken" } });
    onTestFinished(async () => void (await secured.stop()));
    expect(await clerkFor([secured.url], { token: "t0ken" }).put("k", "v", 0)).toEqual({ err: "OK", version: 1 });
    await expect(clerkFor([secured.url], { token: "wrong" }).get("k")).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
    await expect(clerkFor([secured.url]).get("k")).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
  });

  it("retries a 503 after Retry-After without making the put ambiguous", async () => {
    // A real front server that refuses the first two requests, then forwards to the kv server.
    let refused = 0;
    const front = createServer(async (req, res) => {
      if (refused < 2) {
        refused++;
        res.writeHead(503, { "content-type": "application/json", "retry-after": "0.05" }).end('{"err":"ErrUnavailable"}');
        return;
      }
      const body = await new Promise<string>((r) => {
        let b = "";
        req.on("data", (c) => (b += c)).on("end", () => r(b));
      });
      const upstream = await request(`${server.url}${req.url}`, { method: req.method as "PUT", headers: req.headers, body: body || undefined });
      res.writeHead(upstream.statusCode, { "content-type": "application/json" }).end(await upstream.body.text());
    });
    await new Promise<void>((r) => front.listen(0, "127.0.0.1", r));
    onTestFinished(() => new Promise<void>((r) => front.close(() => r())));
    const clerk = clerkFor([`http://127.0.0.1:${(front.address() as AddressInfo).port}`]);
    expect(await clerk.put("http-503", "v", 0)).toEqual({ err: "OK", version: 1 });
    expect(refused).toBe(2);
    expect(await clerk.put("http-503", "w", 0)).toEqual({ err: "ErrVersion" }); // a plain answer, not ErrMaybe
  });

  it("rejects calls after close with ERR_KV_CLOSED", async () => {
    const clerk = clerkFor([server.url]);
    await clerk.get("k");
    await clerk.close();
    await expect(clerk.get("k")).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
  });

  it("rejects a malformed endpoint list with InvalidArgumentError", () => {
    expect(() => createClerk({ endpoints: [] })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
    expect(() => createClerk({ endpoints: ["127.0.0.1:7070"] })).toThrow(TypeError);
    expect(() => createClerk({ endpoints: ["http://h/v1"] })).toThrow(TypeError);
  });
});

describe("createClerk through the fault proxy (resets, drops, blackholes)", () => {
  it("keeps 10 clients linearizable on a few keys, and every call gets an answer", async () => {
    const seed = testSeed();
    const proxy = await createFaultProxy({
      target: { host: "127.0.0.1", port: server.port },
      seed,
      connection: { reset: 0.05, blackhole: 0.02 },
      request: { reset: 0.05, drop: 0.05, blackhole: 0.02, delay: 0.1, delayMs: 20 },
      reply: { reset: 0.05, drop: 0.05, delay: 0.1, delayMs: 20 },
    });
    onTestFinished(() => proxy.close());
    const clerks = Array.from({ length: 10 }, () => clerkFor([proxy.url], { attemptTimeoutMs: 300 }));
    const prefix = `proxy-${seed}-`;
    const history = await recordHistory({
      clients: 10,
      opsPerClient: 30,
      keys: [`${prefix}a`, `${prefix}b`, `${prefix}c`],
      seed,
      now: () => performance.now(),
      execute: (c, op): Promise<GetResult | PutResult> => {
        const clerk = clerks[c] as Clerk;
        return op.kind === "get" ? clerk.get(op.key) : clerk.put(op.key, op.value, op.version);
      },
    });
    expect(proxy.stats.reset, `seed ${seed}`).toBeGreaterThan(0);
    expect(proxy.stats.dropped, `seed ${seed}`).toBeGreaterThan(0);
    expect(proxy.stats.blackholed, `seed ${seed}`).toBeGreaterThan(0);
    expect(history.every((e) => e.output !== undefined)).toBe(true);
    assertLinearizable(history, { seed });
  });
});
