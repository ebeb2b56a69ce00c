import { createServer, type IncomingMessage } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import type { GetResult, PutResult } from "@kv/rpc";
import {
  assertLinearizable,
  createFaultProxy,
  createTestCertificates,
  recordHistory,
  type ServerProcess,
  startServerProcess,
  testSeed,
} from "@kv/testkit";
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

interface FrontReply {
  status: number;
  body: string;
  headers?: Record<string, string>;
}

/**
 * A real HTTP server in front of the kv server that answers as `decide` says: with a reply of its
 * own, or with what the kv server answers (`forward`).
 */
async function startFront(decide: (req: IncomingMessage, forward: () => Promise<FrontReply>, body: string) => Promise<FrontReply>) {
  const front = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString();
    const forward = async (): Promise<FrontReply> => {
      const upstream = await request(`${server.url}${req.url}`, {
        method: req.method as "PUT",
        headers: req.headers,
        body: body || undefined,
      });
      return { status: upstream.statusCode, body: await upstream.body.text() };
    };
    const reply = await decide(req, forward, body);
    res.writeHead(reply.status, { "content-type": "application/json", ...reply.headers }).end(reply.body);
  });
  await new Promise<void>((r) => front.listen(0, "127.0.0.1", r));
  onTestFinished(() => new Promise<void>((r) => front.close(() => r())));
  return { url: `http://127.0.0.1:${(front.address() as AddressInfo).port}` };
}

describe("createClerk over HTTP", () => {
  it("gets and puts against the built server, keys . and .. included", async () => {
    const clerk = clerkFor([server.url]);
    for (const key of ["http-basic", ".", "..", "a/b", "ключ"]) {
      expect(await clerk.get(key)).toEqual({ err: "ErrNoKey" });
      expect(await clerk.put(key, `v of ${key}`, 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
      expect(await clerk.put(key, "late", 0)).toEqual({ err: "ErrVersion" });
      expect(await clerk.get(key)).toEqual({
        err: "OK",
        value: `v of ${key}`,
        version: 1,
        modRevision: expect.any(Number),
        createRevision: expect.any(Number),
      });
    }
    expect(await clerk.put("http-absent", "v", 3)).toEqual({ err: "ErrNoKey" });
  });

  it("deletes against the built server, at a version and not, keys . and .. included", async () => {
    const clerk = clerkFor([server.url]);
    for (const key of ["http-del", ".", ".."]) {
      await clerk.put(key, "v", 0).then(() => clerk.delete(key)); // . and .. exist from the test above
      expect(await clerk.put(key, "v", 0)).toMatchObject({ err: "OK", version: 1 });
      expect(await clerk.delete(key, { version: 2 })).toEqual({ err: "ErrVersion" });
      expect(await clerk.delete(key, { version: 1 })).toEqual({ err: "OK", revision: expect.any(Number) });
      expect(await clerk.get(key)).toEqual({ err: "ErrNoKey" });
      expect(await clerk.delete(key)).toEqual({ err: "ErrNoKey" });
    }
  });

  it("serves many concurrent callers from one clerk", async () => {
    const clerk = clerkFor([server.url]);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => clerk.put(`http-many-${i}`, "v", 0)));
    expect(results.every((r) => r.err === "OK")).toBe(true);
  });

  it("long-polls: a put through another clerk answers the wait, and a wait that runs out answers the state then", async () => {
    const waiter = clerkFor([server.url]);
    const writer = clerkFor([server.url]);
    await writer.put("http-wait", "a", 0);
    // A 60 s wait: unless the put wakes it, the test runs out of time (30 s) first.
    const waiting = waiter.get("http-wait", { waitVersion: 1, waitMs: 60_000 });
    await expect.poll(() => request(`${server.url}/metrics`).then((r) => r.body.text()), { timeout: 10_000 }).toMatch(/^kv_waiters 1$/m);
    await writer.put("http-wait", "b", 1);
    expect(await waiting).toEqual({
      err: "OK",
      value: "b",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(await waiter.get("http-wait", { waitVersion: 2, waitMs: 300 })).toEqual({
      err: "OK",
      value: "b",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(await waiter.get("http-wait-absent", { waitVersion: 0, waitMs: 100 })).toEqual({ err: "ErrNoKey" });
  });

  it("fails over from a dead first endpoint to a live second one", async () => {
    const clerk = clerkFor([`http://127.0.0.1:${await deadPort()}`, server.url]);
    expect(await clerk.put("http-failover", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await clerk.get("http-failover")).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
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
    expect(await clerkFor([secured.url], { token: "t0ken" }).put("k", "v", 0)).toEqual({
      err: "OK",
      version: 1,
      revision: expect.any(Number),
    });
    await expect(clerkFor([secured.url], { token: "wrong" }).get("k")).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
    await expect(clerkFor([secured.url]).get("k")).rejects.toMatchObject({ code: "ERR_KV_UNAUTHORIZED" });
  });

  it("retries a 503 without making the put ambiguous, even when the key moved meanwhile", async () => {
    const writer = clerkFor([server.url]);
    await writer.put("http-503", "v1", 0);
    let refused = 0;
    const front = await startFront(async (req, forward) => {
      if (req.method === "PUT" && refused++ === 0) {
        await writer.put("http-503", "by another", 1); // the key moves while our put waits
        return { status: 503, body: '{"err":"ErrUnavailable"}' };
      }
      return forward();
    });
    const clerk = clerkFor([front.url]);
    expect(await clerk.put("http-503", "ours", 1)).toEqual({ err: "ErrVersion" }); // not ErrMaybe: nothing was applied
    expect(refused).toBe(2);
  });

  it("waits as long as Retry-After asks before it retries a 429", async () => {
    const arrivals: number[] = [];
    const front = await startFront(async (_req, forward) => {
      arrivals.push(performance.now());
      if (arrivals.length === 1) return { status: 429, body: '{"err":"ErrUnavailable"}', headers: { "retry-after": "1" } };
      return forward();
    });
    const clerk = clerkFor([front.url]); // backoff at most 100 ms: only Retry-After explains a longer wait
    expect(await clerk.put("http-429", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(arrivals).toHaveLength(2);
    expect((arrivals[1] as number) - (arrivals[0] as number)).toBeGreaterThanOrEqual(990);
  });

  it("counts a 504 as a try with no reply and retries it as a retry; the refusal it meets is final, and the held first try never applies", async () => {
    const writer = clerkFor([server.url]);
    await writer.put("http-504", "v1", 0);
    let held: (() => Promise<FrontReply>) | undefined;
    const bodies: string[] = [];
    const front = await startFront(async (req, forward, body) => {
      if (req.method === "PUT") bodies.push(body);
      if (req.method === "PUT" && held === undefined) {
        held = forward; // the first try, held back on its way
        return { status: 504, body: '{"err":"ErrMaybe"}' };
      }
      return forward();
    });
    // Ours names version 2 while the key is at 1: its retry is refused, and the refusal recorded.
    expect(await clerkFor([front.url]).put("http-504", "ours", 2)).toEqual({ err: "ErrVersion" });
    expect(bodies.map((b) => JSON.parse(b).retry)).toEqual([undefined, true]);
    await writer.put("http-504", "theirs", 1); // the key reaches the version ours named…
    expect(await (held as () => Promise<FrontReply>)()).toMatchObject({ status: 409 }); // …and the late first try is answered the refusal
    expect(await writer.get("http-504")).toMatchObject({ value: "theirs", version: 2 });
  });

  it("connects over https to a server whose certificate a private CA signed, given tls.ca", async () => {
    const { ca, key, cert } = createTestCertificates("127.0.0.1");
    const tlsFront = createTlsServer({ key, cert }, (socket) => socket.pipe(connect(server.port, "127.0.0.1")).pipe(socket));
    await new Promise<void>((r) => tlsFront.listen(0, "127.0.0.1", r));
    onTestFinished(() => new Promise<void>((r) => tlsFront.close(() => r())));
    const url = `https://127.0.0.1:${(tlsFront.address() as AddressInfo).port}`;
    const clerk = clerkFor([url], { tls: { ca } });
    expect(await clerk.put("https-key", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await clerk.get("https-key")).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    // Without the CA the server is not trusted: no try gets a reply, and the caller's deadline ends it.
    await expect(clerkFor([url]).get("https-key", { signal: AbortSignal.timeout(300) })).rejects.toMatchObject({ name: "AbortError" });
  });

  it("stops a call at once with AbortError when its signal aborts, even while its try hangs", async () => {
    const proxy = await createFaultProxy({ target: { host: "127.0.0.1", port: server.port }, connection: { blackhole: 1 } });
    onTestFinished(() => proxy.close());
    const clerk = clerkFor([proxy.url], { attemptTimeoutMs: 60_000 });
    const ac = new AbortController();
    const put = clerk.put("http-abort", "v", 0, { signal: ac.signal });
    setTimeout(() => ac.abort(new Error("enough")), 100);
    await expect(put).rejects.toMatchObject({ name: "AbortError", code: "ABORT_ERR", cause: new Error("enough") });
  });

  it("ends a call waiting to retry with ERR_KV_CLOSED when the clerk closes", async () => {
    const clerk = clerkFor([`http://127.0.0.1:${await deadPort()}`], { backoff: { baseMs: 60_000, maxMs: 60_000 } });
    const get = clerk.get("k");
    await new Promise((r) => setTimeout(r, 100)); // its first try is refused; it sleeps before the next
    await clerk.close();
    await expect(get).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
  });

  it("lets calls in flight finish when the clerk closes", async () => {
    const clerk = clerkFor([server.url]);
    const puts = Array.from({ length: 20 }, (_, i) => clerk.put(`http-closing-${i}`, "v", 0));
    await clerk.close();
    expect(await Promise.all(puts)).toEqual(Array.from({ length: 20 }, () => ({ err: "OK", version: 1, revision: expect.any(Number) })));
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

  it("rejects a token that could not travel in a header with InvalidArgumentError", () => {
    for (const token of ["", "a\nb", "a b", "ключ"]) {
      expect(() => createClerk({ endpoints: ["http://127.0.0.1:1"], token })).toThrow(
        expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }),
      );
    }
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
