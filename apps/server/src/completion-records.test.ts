import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvPath } from "@kv/rpc";
import { startServerProcess } from "@kv/testkit";
import { describe, expect, it, onTestFinished } from "vitest";
import { startTestServer, type TestServer, waitUntil } from "./test-support/testing";

/** The `kv_completion_records` gauge, read from /metrics. */
async function recordCount(kv: TestServer): Promise<number> {
  const text = (await kv.request("GET", "/metrics")).body as unknown as string;
  return Number(/^kv_completion_records (\d+)$/m.exec(text)?.[1]);
}

/** A PUT through `fetch`: the reply's status and body. */
async function put(url: string, key: string, body: unknown) {
  const res = await fetch(`${url}${kvPath(key)}`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json() };
}

describe("completion records (KV_ID_RETENTION_MS, KV_MAX_IDS)", () => {
  it("refuses the write past KV_MAX_IDS 503, changing nothing, answers recorded retries, and takes writes again once records expire", async () => {
    const kv = await startTestServer({ KV_MAX_IDS: "100", KV_ID_RETENTION_MS: "1000" });
    onTestFinished(() => kv.close());
    for (let i = 0; i < 100; i++) expect((await kv.put(`k${i}`, { value: "v", version: 0, id: `id-${i}` })).status).toBe(200);
    expect(await recordCount(kv)).toBe(100);
    const refused = await kv.put("k100", { value: "v", version: 0, id: "id-100" });
    expect(refused).toMatchObject({ status: 503, body: { err: "ErrUnavailable" } });
    expect((await kv.get("k100")).status).toBe(404);
    // A retry whose record exists is still answered from it; a write without an id needs none.
    expect(await kv.put("k0", { value: "v", version: 0, id: "id-0", retry: true })).toMatchObject({ status: 200, body: { version: 1 } });
    expect((await kv.put("no-id", { value: "v", version: 0 })).status).toBe(200);

    await waitUntil(
      async () => (await recordCount(kv)) === 0,
      5_000,
      async () => `${await recordCount(kv)} records left`,
    );
    expect(await kv.put("k100", { value: "v", version: 0, id: "id-100" })).toMatchObject({ status: 200, body: { version: 1 } });
    expect(await recordCount(kv)).toBe(1);
  });

  it("answers a retry from its record after the server on LMDB was killed with SIGKILL and restarted", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-records-crash-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const env = { KV_STORE: `lmdb:${dir}` };
    const first = await startServerProcess({ env });
    onTestFinished(() => first.kill());
    expect(await put(first.url, "k", { value: "mine", version: 0, id: "put-mine" })).toEqual({
      status: 200,
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    expect(await put(first.url, "k", { value: "theirs", version: 1, id: "put-theirs" })).toEqual({
      status: 200,
      body: { err: "OK", version: 2, revision: expect.any(Number) },
    });
    await first.kill();

    const second = await startServerProcess({ env });
    onTestFinished(() => second.kill());
    // Another write came in between: only the record can tell that the retried put was applied.
    expect(await put(second.url, "k", { value: "mine", version: 0, id: "put-mine", retry: true })).toEqual({
      status: 200,
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    const res = await fetch(`${second.url}${kvPath("k")}`);
    expect(await res.json()).toEqual({
      err: "OK",
      value: "theirs",
      version: 2,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
  });
});
