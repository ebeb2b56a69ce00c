import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type SpawnedServer, spawnServerProcess } from "@kv/testkit";
import { request } from "undici";
import { afterEach, describe, expect, it, onTestFinished } from "vitest";

// The built server, as `pnpm start` runs it (turbo builds before testing), and as deployed:
// the server's own host and log level.
const main = fileURLToPath(new URL("../dist/main.js", import.meta.url));
const servers: SpawnedServer[] = [];
afterEach(() => Promise.all(servers.splice(0).map((server) => server.kill())));

/** The built server on a free port; on the memory store unless `env` names one, or on the default store in `cwd` if given. */
function startServer(env: Record<string, string> = {}, args: string[] = [], cwd?: string): SpawnedServer {
  const server = spawnServerProcess({
    entry: main,
    args,
    env: { KV_HOST: undefined, KV_LOG_LEVEL: undefined, ...(cwd !== undefined && { KV_STORE: undefined }), ...env },
    ...(cwd !== undefined && { cwd }),
  });
  servers.push(server);
  return server;
}

/** A raw connection to `url`, collecting everything the server sends on it. */
async function openConnection(url: URL) {
  const socket = connect(Number(url.port), url.hostname);
  await once(socket, "connect");
  const reply = { text: "" };
  socket.on("data", (chunk) => (reply.text += chunk));
  return { socket, reply };
}

/**
 * Resolves once `url` takes no new connections: Fastify closes its listener after the preClose
 * hooks. A connection that raced the close into the listen queue is reset instead of refused.
 */
async function expectRefused(url: URL): Promise<void> {
  const [err] = await once(connect(Number(url.port), url.hostname), "error");
  expect(["ECONNREFUSED", "ECONNRESET"]).toContain(err.code);
}

/** Polls `condition` every 10 ms for at most 10 s. */
async function waitFor(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}

describe("the built server (dist/main.js)", () => {
  it("logs one line with the bound address and serves requests", async () => {
    const server = startServer({});
    const url = new URL(await server.listening);
    expect(url.hostname).toBe("127.0.0.1");
    const res = await fetch(new URL("/v1/kv/a", url));
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ err: "ErrNoKey" });
    expect(
      server
        .stdout()
        .split("\n")
        .filter((l) => l.includes("listening")),
    ).toHaveLength(1);
  });

  it.each(["SIGTERM", "SIGINT"] as const)(
    "on %s stops accepting, answers the request in flight, refuses one that arrives, and exits 0",
    async (signal) => {
      const server = startServer({});
      const url = new URL(await server.listening);
      const body = JSON.stringify({ value: "sent slowly", version: 0 });
      const half = Math.floor(body.length / 2);

      // A put whose body arrives in two parts, and a get whose headers do, with the signal in between.
      const inFlight = await openConnection(url);
      inFlight.socket.write(
        `PUT /v1/kv/slow HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, half)}`,
      );
      const late = await openConnection(url);
      late.socket.write("GET /v1/kv/slow HTTP/1.1\r\nHost: kv\r\n");
      await new Promise((r) => setTimeout(r, 100)); // let the server read both parts
      let hasExited = false;
      void server.exited.then(() => (hasExited = true));
      server.signal(signal);
      await waitFor(() => server.stdout().includes('"msg":"closing"'));

      await expectRefused(url); // no longer accepting
      expect(hasExited).toBe(false); // still waiting for the request in flight

      late.socket.write("\r\n");
      await once(late.socket, "close");
      expect(late.reply.text).toMatch(/^HTTP\/1\.1 503 /);
      expect(late.reply.text).toContain('{"err":"ErrUnavailable","message":"the server is shutting down"}');

      inFlight.socket.write(body.slice(half));
      await once(inFlight.socket, "close");
      expect(inFlight.reply.text).toMatch(/^HTTP\/1\.1 200 /);
      expect(inFlight.reply.text).toMatch(/\{"err":"OK","version":1,"revision":\d+\}/);
      expect(await server.exited).toBe(0);
    },
  );

  it("answers /readyz on a kept-alive connection 503 ErrUnavailable once closing, and exits 0", async () => {
    const server = startServer({});
    const url = new URL(await server.listening);
    // Two readiness checks in one write: the first is answered 200 and keeps the connection; the
    // second, all but its final blank line, keeps the connection busy, so closing waits for it
    // (an idle kept-alive connection is simply dropped on close).
    const probe = await openConnection(url);
    probe.socket.write("GET /readyz HTTP/1.1\r\nHost: kv\r\n\r\nGET /readyz HTTP/1.1\r\nHost: kv\r\n");
    await waitFor(() => probe.reply.text.includes('{"status":"ready"}'));
    expect(probe.reply.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(probe.reply.text).toMatch(/^connection: keep-alive\r$/im);
    const readyReply = probe.reply.text.length;

    server.signal("SIGTERM");
    await waitFor(() => server.stdout().includes('"msg":"closing"'));
    await expectRefused(url);

    probe.socket.write("\r\n");
    await once(probe.socket, "close");
    const closingReply = probe.reply.text.slice(readyReply);
    expect(closingReply).toMatch(/^HTTP\/1\.1 503 /);
    expect(closingReply).toContain('{"err":"ErrUnavailable","message":"the server is shutting down"}');
    expect(await server.exited).toBe(0);
  });

  it.each([
    [{ KV_PORT: "abc" }, [], /KV_PORT must be an integer from 0 to 65535, got "abc"/],
    [{}, ["--port", "70000"], /--port must be an integer from 0 to 65535, got "70000"/],
    [{ KV_LOG_LEVEL: "chatty" }, [], /KV_LOG_LEVEL must be one of/],
  ])("exits non-zero with one clear line for %j %j", async (env, args, message) => {
    const server = startServer(env, args);
    const code = await server.exited;
    expect(code).not.toBe(0);
    expect(code).not.toBe(null);
    const lines = server.stderr().trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
  });

  it("keeps its data on the default store, lmdb:kv-data in the working directory, across a restart", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "kv-default-store-"));
    onTestFinished(() => rmSync(cwd, { recursive: true, force: true }));
    const first = startServer({}, [], cwd);
    const url = new URL(await first.listening);
    const put = await request(new URL("/v1/kv/kept", url), {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: '{"value":"v","version":0}',
    });
    expect(await put.body.json()).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await first.stop()).toBe(0);
    expect(existsSync(join(cwd, "kv-data", "data.mdb"))).toBe(true);

    const second = startServer({}, [], cwd);
    const again = await request(new URL("/v1/kv/kept", await second.listening));
    expect(await again.body.json()).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    expect(await second.stop()).toBe(0);
  });

  it("exits non-zero with one clear line when its LMDB directory is another server's", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-held-store-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const first = startServer({ KV_STORE: `lmdb:${dir}` });
    await first.listening;
    const second = startServer({ KV_STORE: `lmdb:${dir}` });
    expect(await second.exited).toBe(1);
    expect(second.stderr().trim().split("\n")).toEqual([`kv-server: cannot open the store: ${dir} is in use by another kv server process`]);
  });

  it("exits non-zero with one clear line when the store's path is not an LMDB environment", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-not-lmdb-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "notes.txt"), "mine");
    const server = startServer({ KV_STORE: `lmdb:${dir}` });
    expect(await server.exited).toBe(1);
    const lines = server.stderr().trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^kv-server: cannot open the store: .* is not an LMDB environment/);
  });

  it("exits non-zero with a clear line when the port is taken", async () => {
    const first = startServer({});
    const url = new URL(await first.listening);
    const second = startServer({ KV_PORT: url.port });
    expect(await second.exited).toBe(1);
    expect(second.stderr()).toMatch(/cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  });
});
