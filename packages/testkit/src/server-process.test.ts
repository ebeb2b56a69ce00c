import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { type ServerProcessOptions, spawnServerProcess, startServerProcess } from "./server-process";

/** Starts a server that is killed after the test, whatever happened in it. */
async function start(options?: ServerProcessOptions) {
  const server = await startServerProcess(options);
  onTestFinished(() => server.kill());
  return server;
}

const put = (url: string, key: string, version: number) =>
  fetch(`${url}/v1/kv/${key}`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ value: "v", version }),
  });

/** A stand-in server that says 503 to its first two `/readyz` requests, and how many it has had. */
const SLOW_TO_READY = `
import { createServer } from "node:http";
let polls = 0;
const server = createServer((req, res) => {
  if (req.url !== "/readyz") return void res.writeHead(404).end();
  polls++;
  const ready = polls > 2;
  res.writeHead(ready ? 200 : 503, { "content-type": "application/json" }).end(JSON.stringify({ ready, polls }));
});
server.listen(0, "127.0.0.1", () => console.log("Server listening at http://127.0.0.1:" + server.address().port));
`;

describe("startServerProcess", () => {
  it("resolves only once /readyz answers 200: a single GET /readyz right after it is answered 200", async () => {
    const dir = await mkdtemp(join(tmpdir(), "kv-testkit-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const entry = join(dir, "slow-to-ready.mjs");
    await writeFile(entry, SLOW_TO_READY);
    const server = await start({ entry });
    const res = await fetch(`${server.url}/readyz`, { signal: AbortSignal.timeout(5_000) }); // one try, no retry
    expect(res.status).toBe(200);
    const { polls } = (await res.json()) as { polls: number };
    expect(polls).toBeGreaterThanOrEqual(4); // the harness asked through both 503s, then got its 200
  });

  it("starts the built server on a free loopback port, ready, and stops it with exit code 0", async () => {
    const server = await start();
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect((await put(server.url, "k", 0)).status).toBe(200);
    expect(await server.stop()).toBe(0);
  });

  it("kills it: the process is gone and its port refuses connections", async () => {
    const server = await start();
    await server.kill();
    expect(await server.exited).toBe(null);
    await expect(fetch(`${server.url}/readyz`)).rejects.toThrow();
  });

  it("pauses it: requests hang until it resumes, then are answered", async () => {
    const server = await start();
    server.pause();
    await expect(fetch(`${server.url}/readyz`, { signal: AbortSignal.timeout(300) })).rejects.toMatchObject({ name: "TimeoutError" });
    server.resume();
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    expect(await server.stop()).toBe(0);
  });

  it("passes configuration through the environment", async () => {
    const server = await start({ env: { KV_MAX_VALUE_BYTES: "1" } });
    const res = await fetch(`${server.url}/v1/kv/k`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ value: "too long", version: 0 }),
    });
    expect(res.status).toBe(413);
  });

  it("escalates a stop that takes too long to SIGKILL", async () => {
    const server = await start();
    // A request whose body never finishes keeps a graceful close waiting.
    const socket = connect(server.port, "127.0.0.1");
    onTestFinished(() => void socket.destroy());
    await once(socket, "connect");
    socket.write("PUT /v1/kv/k HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
    await new Promise((r) => setTimeout(r, 100));
    expect(await server.stop({ timeoutMs: 300 })).toBe(null);
  });

  it("rejects with the server's output when it cannot start", async () => {
    await expect(startServerProcess({ env: { KV_PORT: "nope" } })).rejects.toThrow(/KV_PORT must be an integer/);
  });

  it("runs it in cwd, and an env value of undefined drops a default: the server's own store, LMDB in kv-data", async () => {
    const cwd = await mkdtemp(join(tmpdir(), "kv-testkit-cwd-"));
    onTestFinished(() => rm(cwd, { recursive: true, force: true }));
    const server = await start({ cwd, env: { KV_STORE: undefined } });
    expect((await put(server.url, "k", 0)).status).toBe(200);
    expect(await server.stop()).toBe(0);
    expect(existsSync(join(cwd, "kv-data", "data.mdb"))).toBe(true);
  });
});

describe("spawnServerProcess", () => {
  it("returns before the server listens; listening resolves with its address, stdout holds the line", async () => {
    const server = spawnServerProcess();
    onTestFinished(() => server.kill());
    const url = await server.listening;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(server.stdout()).toContain(`Server listening at ${url}`);
    expect(server.stderr()).toBe("");
    server.signal("SIGINT");
    expect(await server.exited).toBe(0);
  });

  it("gives the exit code and stderr of a server that cannot start, and rejects listening", async () => {
    const server = spawnServerProcess({ env: { KV_LOG_LEVEL: "chatty" } });
    expect(await server.exited).toBe(2); // a bad setting
    expect(server.stderr()).toMatch(/KV_LOG_LEVEL must be one of/);
    expect(server.stdout()).toBe("");
    await expect(server.listening).rejects.toThrow(/exited with 2 before listening/);
  });
});
