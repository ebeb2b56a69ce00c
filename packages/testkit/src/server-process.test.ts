import { once } from "node:events";
import { connect } from "node:net";
import { describe, expect, it, onTestFinished } from "vitest";
import { type ServerProcessOptions, startServerProcess } from "./server-process";

/** Starts a server that is killed after the test, whatever happened in it. */
async function start(options?: ServerProcessOptions) {
  const server = await startServerProcess(options);
  onTestFinished(() => server.kill());
  return server;
}

const put = (url: string, key: string, version: number) =>
  fetch(`${url}/v1/kv/${key}`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ value: "v", version }) });

describe("startServerProcess", () => {
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
});
