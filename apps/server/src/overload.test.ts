import { once } from "node:events";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { createClerk } from "@kv/clerk";
import { MemoryStore, type PutIfVersionResult, type PutOptions, type Store, type StoredEntry } from "@kv/server";
import { describe, expect, it, onTestFinished } from "vitest";
import { startTestServer } from "./test-support/testing";

/** A MemoryStore that takes `delayMs` over each put and remembers which keys reached it. */
class SlowStore implements Store {
  readonly #memory = new MemoryStore();
  readonly putKeys: string[] = [];
  constructor(readonly delayMs: number) {}
  get(key: string): Promise<StoredEntry | undefined> {
    return this.#memory.get(key);
  }
  async putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options?: PutOptions,
  ): Promise<PutIfVersionResult> {
    this.putKeys.push(key);
    await sleep(this.delayMs);
    return this.#memory.putIfVersion(key, value, expectedVersion, putId, options);
  }
  deleteIfVersion(key: string, expectedVersion: number | undefined, id: string | undefined, options?: PutOptions) {
    return this.#memory.deleteIfVersion(key, expectedVersion, id, options);
  }
  close(): Promise<void> {
    return this.#memory.close();
  }
}

describe("overload: too many requests in flight (KV_MAX_IN_FLIGHT)", () => {
  it("refuses the excess 503 ErrUnavailable with Retry-After before it reaches the store, and serves the rest", async () => {
    const store = new SlowStore(300);
    const kv = await startTestServer({ KV_MAX_IN_FLIGHT: "4" }, store);
    onTestFinished(() => kv.close());
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => kv.put(`burst-${i}`, { value: "v", version: 0 })));
    const served = replies.flatMap((r, i) => (r.status === 200 ? [`burst-${i}`] : []));
    const refused = replies.filter((r) => r.status === 503);
    expect(served.length + refused.length).toBe(20);
    expect(served.length).toBeGreaterThanOrEqual(4);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) {
      expect(r.body).toMatchObject({ err: "ErrUnavailable", message: expect.stringContaining("overloaded") });
      expect(r.headers["retry-after"]).toBe("1");
    }
    expect(store.putKeys.sort()).toEqual(served.sort()); // a refused put never reached the store
    for (const [i, r] of replies.entries()) expect((await kv.get(`burst-${i}`)).status).toBe(r.status === 200 ? 200 : 404);
    const metrics = (await kv.request("GET", "/metrics")).body as string;
    expect(metrics).toContain(`kv_overload_rejections_total{reason="in_flight"} ${refused.length}`);
  });

  it("sheds a request to an unknown /v1 path too, and answers it 404 once there is room", async () => {
    const kv = await startTestServer({ KV_MAX_IN_FLIGHT: "1" }, new SlowStore(500));
    onTestFinished(() => kv.close());
    const busy = kv.put("busy", { value: "v", version: 0 });
    await sleep(100); // the put holds the only place
    expect(await kv.request("GET", "/v1/nope")).toMatchObject({ status: 503, body: { err: "ErrUnavailable" } });
    expect((await busy).status).toBe(200);
    expect(await kv.request("GET", "/v1/nope")).toMatchObject({
      status: 404,
      body: { err: "ErrNotFound", message: "no route GET /v1/nope" },
    });
  });

  it("frees the place of a request whose client left while the store worked", async () => {
    const kv = await startTestServer({ KV_MAX_IN_FLIGHT: "2" }, new SlowStore(300));
    onTestFinished(() => kv.close());
    const { port } = new URL(kv.base);
    for (const key of ["gone-1", "gone-2"]) {
      const socket = connect(Number(port), "127.0.0.1");
      await once(socket, "connect");
      const body = '{"value":"v","version":0}';
      socket.end(
        `PUT /v1/kv/${key} HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      socket.destroy(); // the whole request sent, then gone before the reply
    }
    await sleep(600); // the store finishes both puts
    const replies = await Promise.all([kv.put("after-1", { value: "v", version: 0 }), kv.put("after-2", { value: "v", version: 0 })]);
    expect(replies.map((r) => r.status)).toEqual([200, 200]);
    expect((await kv.request("GET", "/metrics")).body).toMatch(/^kv_http_requests_in_flight 1$/m); // the scrape itself
  });

  it("lets a clerk's puts all complete through the refusals, none of them ErrMaybe", async () => {
    const kv = await startTestServer({ KV_MAX_IN_FLIGHT: "2" }, new SlowStore(50));
    onTestFinished(() => kv.close());
    const clerk = createClerk({ endpoints: [kv.base], backoff: { baseMs: 10, maxMs: 100 } });
    onTestFinished(() => clerk.close());
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => clerk.put(`clerk-${i}`, "v", 0)));
    expect(results).toEqual(Array.from({ length: 12 }, () => ({ err: "OK", version: 1, revision: expect.any(Number) })));
    expect((await kv.request("GET", "/metrics")).body).toMatch(/kv_overload_rejections_total\{reason="in_flight"\} [1-9]/);
  }, 30_000);
});

describe("overload: a lagging event loop (KV_MAX_EVENT_LOOP_DELAY_MS)", () => {
  it("refuses /v1 and /readyz 503 with Retry-After while the loop lags, keeps /healthz open, and recovers by itself", async () => {
    const kv = await startTestServer({ KV_MAX_EVENT_LOOP_DELAY_MS: "50" });
    onTestFinished(() => kv.close());
    expect((await kv.put("before", { value: "v", version: 0 })).status).toBe(200);

    // Block this process's event loop, the server's too, in slices: the delay monitor sees it.
    let refusal: Awaited<ReturnType<typeof kv.get>> | undefined;
    const whileLagging: number[] = [];
    for (let i = 0; i < 40 && refusal === undefined; i++) {
      const until = Date.now() + 200;
      while (Date.now() < until);
      const reply = await kv.get("before");
      if (reply.status !== 503) continue;
      refusal = reply;
      // Asked at once, before the next measurement: still lagging.
      const [ready, health] = await Promise.all([kv.request("GET", "/readyz"), kv.request("GET", "/healthz")]);
      whileLagging.push(ready.status, health.status);
    }
    expect(refusal?.body).toMatchObject({ err: "ErrUnavailable", message: expect.stringContaining("event loop lags") });
    expect(refusal?.headers["retry-after"]).toBe("1");
    expect(whileLagging).toEqual([503, 200]);

    // Left alone, it serves again.
    let recovered = false;
    for (let i = 0; i < 50 && !recovered; i++) {
      await sleep(100);
      recovered = (await kv.get("before")).status === 200;
    }
    expect(recovered).toBe(true);
    expect((await kv.request("GET", "/healthz")).status).toBe(200);
    expect((await kv.request("GET", "/metrics")).body).toMatch(/kv_overload_rejections_total\{reason="event_loop_delay"\} [1-9]/);
  }, 30_000);
});
