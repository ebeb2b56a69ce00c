import { startServerProcess } from "@kv/testkit";
import { request } from "undici";
import { describe, expect, it, onTestFinished } from "vitest";
import { startTestServer, type TestServer } from "./test-support/testing";

/** Until `n` long-poll reads wait on the server: a write made then must wake them, not meet them. */
async function waitersReach(kv: TestServer, n: number): Promise<void> {
  await expect
    .poll(async () => (await kv.request("GET", "/metrics")).body, { timeout: 10_000 })
    .toMatch(new RegExp(`^kv_waiters ${n}$`, "m"));
}

describe("long-poll reads (GET /v1/kv/:key?waitVersion&waitMs)", () => {
  it("answers as soon as a put through the same server changes the key", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    expect((await kv.put("lp", { value: "v1", version: 0 })).status).toBe(200);
    // A 60 s wait: unless the put wakes it, the test runs out of time first.
    const waiting = kv.request("GET", "/v1/kv/lp?waitVersion=1&waitMs=60000");
    await waitersReach(kv, 1);
    expect((await kv.put("lp", { value: "v2", version: 1 })).status).toBe(200);
    expect(await waiting).toMatchObject({
      status: 200,
      body: { err: "OK", value: "v2", version: 2, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
  });

  it("waits on HEAD as on GET, and refuses a HEAD with waitVersion alone", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    await kv.put("head", { value: "v1", version: 0 });
    const waiting = kv.request("HEAD", "/v1/kv/head?waitVersion=1&waitMs=60000");
    await waitersReach(kv, 1);
    expect((await kv.put("head", { value: "v2", version: 1 })).status).toBe(200);
    expect(await waiting).toMatchObject({ status: 200 });
    expect(await kv.request("HEAD", "/v1/kv/head?waitVersion=1")).toMatchObject({ status: 400 });
  });

  it("waits without polling the store: it reads on arrival and when the wait is over, not in between", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    await kv.put("idle", { value: "v", version: 0 });
    const storeGets = async () => {
      const text = (await kv.request("GET", "/metrics")).body as unknown as string;
      return Number(
        /^kv_store_operation_duration_seconds_count\{[^}]*operation="get"[^}]*outcome="found"[^}]*\} (\d+)$/m.exec(text)?.[1] ?? 0,
      );
    };
    const before = await storeGets();
    expect(await kv.request("GET", "/v1/kv/idle?waitVersion=1&waitMs=1000")).toMatchObject({ status: 200, body: { version: 1 } });
    const reads = (await storeGets()) - before;
    expect(reads).toBeGreaterThan(0);
    expect(reads).toBeLessThanOrEqual(2); // on arrival and when the wait is over, not in between
  });

  it("waits for an absent key to appear with waitVersion=0, and answers at once when the version already differs", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    const waiting = kv.request("GET", "/v1/kv/new?waitVersion=0&waitMs=60000");
    await waitersReach(kv, 1);
    await kv.put("new", { value: "here", version: 0 });
    expect(await waiting).toMatchObject({ status: 200, body: { value: "here", version: 1 } });
    expect(await kv.request("GET", "/v1/kv/new?waitVersion=7&waitMs=30000")).toMatchObject({ status: 200, body: { version: 1 } });
  });

  it("answers with the current state when the wait is over, absent keys included", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    await kv.put("quiet", { value: "v", version: 0 });
    expect(await kv.request("GET", "/v1/kv/quiet?waitVersion=1&waitMs=150")).toMatchObject({
      status: 200,
      body: { err: "OK", value: "v", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
    expect(await kv.request("GET", "/v1/kv/nothing?waitVersion=0&waitMs=150")).toMatchObject({ status: 404, body: { err: "ErrNoKey" } });
  });

  it.each([
    ["/v1/kv/k?waitVersion=1", "waitVersion and waitMs go together"],
    ["/v1/kv/k?waitMs=10", "waitVersion and waitMs go together"],
    ["/v1/kv/k?waitVersion=1&waitMs=60001", "waitMs must be at most 60000"],
    ["/v1/kv/k?waitVersion=-1&waitMs=10", "querystring/waitVersion must match pattern"],
    ["/v1/kv/k?waitVersion=1&waitMs=1e3", "querystring/waitMs must match pattern"],
    ["/v1/kv/k?waitVersion=9007199254740992&waitMs=10", "waitVersion must be at most 9007199254740991"],
    ["/v1/kv/k?waitVersion=9999999999999999&waitMs=10", "waitVersion must be at most 9007199254740991, got 9999999999999999"],
  ])("refuses %s with 400", async (path, message) => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    expect(await kv.request("GET", path)).toMatchObject({
      status: 400,
      body: { err: "ErrBadRequest", message: expect.stringContaining(message) },
    });
  });

  it("caps the reads waiting at once (KV_MAX_WAITERS): past the cap 503 with Retry-After, and counts them in /metrics", async () => {
    const kv = await startTestServer({ KV_MAX_WAITERS: "2" });
    onTestFinished(() => kv.close());
    const held = [kv.request("GET", "/v1/kv/a?waitVersion=0&waitMs=5000"), kv.request("GET", "/v1/kv/b?waitVersion=0&waitMs=5000")];
    await expect.poll(async () => (await kv.request("GET", "/metrics")).body, { timeout: 4_000 }).toMatch(/^kv_waiters 2$/m);
    const third = await kv.request("GET", "/v1/kv/c?waitVersion=0&waitMs=2000");
    expect(third).toMatchObject({ status: 503, body: { err: "ErrUnavailable", message: expect.stringContaining("long-poll") } });
    expect(third.headers["retry-after"]).toBe("1");
    expect((await kv.get("c")).status).toBe(404); // plain reads still served
    await Promise.all(held);
    const metrics = (await kv.request("GET", "/metrics")).body as unknown as string;
    expect(metrics).toMatch(/^kv_waiters 0$/m);
    // Their minute-long waits are counted apart from the reads' latency.
    expect(metrics).toMatch(/^kv_http_requests_total\{route="\/v1\/kv\/:key\?wait",method="GET",status="404"\} 2$/m);
  });

  it("does not count waiting reads against KV_MAX_IN_FLIGHT: puts go on while more reads wait than the cap", async () => {
    const kv = await startTestServer({ KV_MAX_IN_FLIGHT: "2" });
    onTestFinished(() => kv.close());
    const waiting = Array.from({ length: 5 }, (_, i) => kv.request("GET", `/v1/kv/w${i}?waitVersion=0&waitMs=30000`));
    await expect.poll(async () => (await kv.request("GET", "/metrics")).body, { timeout: 10_000 }).toMatch(/^kv_waiters 5$/m);
    for (let i = 0; i < 5; i++) expect((await kv.put(`w${i}`, { value: "v", version: 0 })).status).toBe(200);
    expect((await Promise.all(waiting)).map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
  });

  it("ends 100 waiting reads at once on SIGTERM, each answered with the state then, and exits 0 promptly", async () => {
    const server = await startServerProcess();
    const waits = Array.from({ length: 100 }, (_, i) =>
      request(`${server.url}/v1/kv/shutdown-${i}?waitVersion=0&waitMs=60000`).then(async (r) => ({
        status: r.statusCode,
        body: await r.body.json(),
      })),
    );
    const waiters = async () => (await request(`${server.url}/metrics`).then((r) => r.body.text())).match(/^kv_waiters (\d+)$/m)?.[1];
    await expect.poll(waiters, { timeout: 20_000, interval: 100 }).toBe("100");
    const code = await server.stop({ timeoutMs: 5_000 }); // still up after 5 s: SIGKILL, and null
    expect(code).toBe(0);
    const replies = await Promise.all(waits);
    expect(replies.every((r) => r.status === 404 && (r.body as { err: string }).err === "ErrNoKey")).toBe(true);
  });
});
