import { startServerProcess } from "@kv/testkit";
import { describe, expect, it, onTestFinished } from "vitest";
import { startTestServer, type TestServer } from "./test-support/testing";

// Prometheus's text format, version 0.0.4: comments, and `name{labels} value` samples.
const SAMPLE = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (-?[0-9.]+(e[-+]?[0-9]+)?|[Nn]a[Nn]|[-+]Inf)$/; // prom-client writes NaN as "Nan", which Prometheus reads
const COMMENT = /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$/;

/** Every sample of `/metrics`, by its whole name and labels; fails on any line that is not Prometheus text. */
async function scrape(kv: TestServer, headers: Record<string, string> = {}): Promise<Map<string, number>> {
  const reply = await kv.request("GET", "/metrics", undefined, headers);
  expect(reply.status).toBe(200);
  expect(reply.headers["content-type"]).toMatch(/^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of (reply.body as string).split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      expect(line).toMatch(COMMENT);
      continue;
    }
    expect(line).toMatch(SAMPLE);
    const at = line.lastIndexOf(" ");
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

describe("/metrics", () => {
  it("is Prometheus text, with the process's metrics and counters that move with the requests", async () => {
    const kv = await startTestServer();
    onTestFinished(() => kv.close());
    const before = await scrape(kv);
    for (const name of [
      "process_cpu_user_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_seconds",
      "kv_http_requests_in_flight",
    ]) {
      expect(
        [...before.keys()].some((k) => k.startsWith(name)),
        name,
      ).toBe(true);
    }
    const count = (samples: Map<string, number>, key: string) => samples.get(key) ?? 0;
    const putsOk = 'kv_http_requests_total{route="/v1/kv/:key",method="PUT",status="200"}';
    const putsConflict = 'kv_http_requests_total{route="/v1/kv/:key",method="PUT",status="409"}';
    const storePuts = 'kv_store_operation_duration_seconds_count{store="memory",operation="putIfVersion",outcome="applied"}';
    const storeRefused = 'kv_store_operation_duration_seconds_count{store="memory",operation="putIfVersion",outcome="refused"}';
    const latency = 'kv_http_request_duration_seconds_count{route="/v1/kv/:key",method="PUT",status="200"}';

    for (let i = 0; i < 3; i++) expect((await kv.put(`m${i}`, { value: "v", version: 0 })).status).toBe(200);
    expect((await kv.put("m0", { value: "late", version: 0 })).status).toBe(409);
    expect((await kv.get("nothing-here")).status).toBe(404);
    expect((await kv.request("GET", "/no/such/route")).status).toBe(404);

    const after = await scrape(kv);
    expect(count(after, putsOk) - count(before, putsOk)).toBe(3);
    expect(count(after, putsConflict) - count(before, putsConflict)).toBe(1);
    expect(count(after, "kv_put_conflicts_total") - count(before, "kv_put_conflicts_total")).toBe(1);
    expect(count(after, latency) - count(before, latency)).toBe(3);
    expect(count(after, storePuts) - count(before, storePuts)).toBe(3);
    expect(count(after, storeRefused) - count(before, storeRefused)).toBe(1);
    expect(count(after, 'kv_http_requests_total{route="/v1/kv/:key",method="GET",status="404"}')).toBeGreaterThanOrEqual(1);
    expect(count(after, 'kv_http_requests_total{route="unmatched",method="GET",status="404"}')).toBeGreaterThanOrEqual(1);
  });

  it("is open with KV_AUTH_TOKEN set, and needs the token too with KV_METRICS_AUTH=true", async () => {
    const open = await startTestServer({ KV_AUTH_TOKEN: "t0ken" });
    onTestFinished(() => open.close());
    expect((await open.request("GET", "/metrics")).status).toBe(200);

    const guarded = await startTestServer({ KV_AUTH_TOKEN: "t0ken", KV_METRICS_AUTH: "true" });
    onTestFinished(() => guarded.close());
    expect(await guarded.request("GET", "/metrics")).toMatchObject({ status: 401, body: { err: "ErrUnauthorized" } });
    expect((await guarded.request("GET", "/metrics", undefined, { authorization: "Bearer wrong" })).status).toBe(401);
    await scrape(guarded, { authorization: "Bearer t0ken" });
  });
});

describe("logs", () => {
  it("never hold the token or a value, even at trace level, and name each request by an id it echoes", async () => {
    const token = "t0ken-that-must-not-leak";
    const value = "value-that-must-not-leak";
    const server = await startServerProcess({ env: { KV_AUTH_TOKEN: token }, args: ["--log-level", "trace"] });
    const auth = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const put = await fetch(`${server.url}/v1/kv/k`, {
      method: "PUT",
      headers: { ...auth, "x-request-id": "req-42" },
      body: JSON.stringify({ value, version: 0 }),
    });
    expect(put.status).toBe(200);
    expect(put.headers.get("x-request-id")).toBe("req-42");
    await fetch(`${server.url}/v1/kv/k`, { headers: { authorization: `Bearer ${token}x` } });
    await fetch(`${server.url}/v1/kv/k`, { method: "PUT", headers: auth, body: "{ not json" });
    await fetch(`${server.url}/v1/kv/k`, { headers: auth });
    expect(await server.stop()).toBe(0);
    const output = server.output();
    expect(output).toContain('"reqId":"req-42"');
    expect(output).not.toContain(token);
    expect(output).not.toContain(value);
  });
});
