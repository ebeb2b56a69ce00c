import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClerk } from "@kv/clerk";
import { type EtcdCluster, type ServerProcess, startEtcdCluster, startServerProcess } from "@kv/testkit";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

type Held = () => Promise<{ status: number; body: string }>;

/**
 * An HTTP front for `target` that holds the first PUT back — answering 504, as a server that
 * could not confirm it — and forwards every other request. `held()` sends the held PUT on, late.
 */
async function startHoldingFront(target: string) {
  let held: Held | undefined;
  const front = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const forward: Held = async () => {
      const upstream = await request(`${target}${req.url}`, {
        method: req.method as "PUT",
        headers: { "content-type": "application/json" },
        body: chunks.length === 0 ? undefined : Buffer.concat(chunks),
      });
      return { status: upstream.statusCode, body: await upstream.body.text() };
    };
    let reply: { status: number; body: string };
    if (req.method === "PUT" && held === undefined) {
      held = forward;
      reply = { status: 504, body: '{"err":"ErrMaybe"}' };
    } else {
      reply = await forward();
    }
    res.writeHead(reply.status, { "content-type": "application/json" }).end(reply.body);
  });
  await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
  onTestFinished(() => new Promise<void>((resolve) => front.close(() => resolve())));
  return { url: `http://127.0.0.1:${(front.address() as AddressInfo).port}`, held: () => (held as Held)() };
}

/**
 * The race a refusal record closes: a put's first try is held back on its way to `servers[0]`;
 * its retry, through the last server, is refused (the key is not yet at the version it names)
 * and the clerk answers that refusal; then the key reaches that version, and the held try
 * arrives. Answers what the held try got, and the key's value at the end.
 */
async function race(servers: ServerProcess[]) {
  const first = servers[0] as ServerProcess;
  const last = servers.at(-1) as ServerProcess;
  const front = await startHoldingFront(first.url);
  const writer = createClerk({ endpoints: [last.url] });
  // The front first, then the last server: a try with no reply moves the clerk on to the next.
  const clerk = createClerk({ endpoints: servers.length === 1 ? [front.url] : [front.url, last.url], backoff: { baseMs: 1, maxMs: 5 } });
  onTestFinished(() => Promise.all([writer.close(), clerk.close()]).then(() => undefined));
  const key = `race-${randomUUID()}`;
  expect(await writer.put(key, "v1", 0)).toMatchObject({ err: "OK", version: 1, revision: expect.any(Number) });
  const answer = await clerk.put(key, "ours", 2);
  expect(await writer.put(key, "theirs", 1)).toMatchObject({ err: "OK", version: 2, revision: expect.any(Number) });
  const late = await front.held();
  return { answer, late: { status: late.status, body: JSON.parse(late.body) as unknown }, end: await writer.get(key) };
}

const recorded = {
  answer: { err: "ErrVersion" },
  late: { status: 409, body: { err: "ErrVersion" } },
  end: { err: "OK", value: "theirs", version: 2, modRevision: expect.any(Number), createRevision: expect.any(Number) },
};
// Without refusal records the clerk still says ErrVersion, and then the held try applies: the lie the records prevent.
const unrecorded = {
  answer: { err: "ErrVersion" },
  late: { status: 200, body: { err: "OK", version: 3, revision: expect.any(Number) } },
  end: { err: "OK", value: "ours", version: 3, modRevision: expect.any(Number), createRevision: expect.any(Number) },
};

describe("a retry's recorded refusal stops its held-back first try (the built server)", () => {
  const lmdbServer = async (env: Record<string, string> = {}) => {
    const dir = mkdtempSync(join(tmpdir(), "kv-race-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const server = await startServerProcess({ env: { KV_STORE: `lmdb:${dir}`, ...env } });
    onTestFinished(() => server.stop().then(() => undefined));
    return server;
  };

  it("on LMDB, one server: the late try is answered the refusal, and the key keeps the other write", async () => {
    expect(await race([await lmdbServer()])).toEqual(recorded);
  });

  it("on LMDB with refusal records switched off (test-only flag), the late try applies: the test would catch it", async () => {
    const server = await lmdbServer({ KV_TEST_NO_REFUSAL_RECORDS: "1" });
    expect(server.output()).toContain("KV_TEST_NO_REFUSAL_RECORDS=1: refusals are not recorded"); // never silently
    expect(await race([server])).toEqual(unrecorded);
  });

  describe("on etcd, two kv servers: the retry goes through the other", () => {
    let etcd: EtcdCluster;
    beforeAll(async () => {
      etcd = await startEtcdCluster({ members: 1 });
    });
    afterAll(() => etcd?.stop());
    const etcdServers = async (env: Record<string, string> = {}) => {
      const shared = { KV_STORE: `etcd:${etcd.endpoints.join(",")}`, KV_ETCD_PREFIX: `race-${randomUUID()}/`, ...env };
      const servers = await Promise.all([startServerProcess({ env: shared }), startServerProcess({ env: shared })]);
      onTestFinished(() => Promise.all(servers.map((s) => s.stop())).then(() => undefined));
      return servers;
    };

    it("the late try through the first server is answered the refusal recorded through the second", async () => {
      expect(await race(await etcdServers())).toEqual(recorded);
    });

    it("with refusal records switched off (test-only flag), the late try applies", async () => {
      expect(await race(await etcdServers({ KV_TEST_NO_REFUSAL_RECORDS: "1" }))).toEqual(unrecorded);
    });
  });
});
