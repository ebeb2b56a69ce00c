import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type SpawnedServer, spawnServerProcess } from "@kv/testkit";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const script = fileURLToPath(new URL("../scripts/bundle.mjs", import.meta.url));
const repo = realpathSync(fileURLToPath(new URL("../../../", import.meta.url)));

// A scratch directory outside the repository holds a copy of the bundle (the original is deleted),
// so the server can only load what the bundle itself carries.
let scratch: string;
let bundle: string;
const servers: SpawnedServer[] = [];

beforeAll(async () => {
  scratch = realpathSync(mkdtempSync(join(tmpdir(), "kv-bundle-test-")));
  expect(relative(repo, scratch).startsWith("..")).toBe(true);
  const made = join(scratch, "made");
  // --no-build: turbo's test task runs after the build, as main.test.ts relies on too.
  await run(process.execPath, [script, "--no-build", made], { cwd: scratch, timeout: 240_000 });
  bundle = join(scratch, "kv");
  await run("cp", ["-r", made, bundle], { timeout: 60_000 });
  rmSync(made, { recursive: true });
}, 300_000);

afterEach(() => Promise.all(servers.splice(0).map((server) => server.kill())));
afterAll(() => {
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
});

/** `node <app>/dist/main.js` in `cwd`, as deployed: its own host and log level, no NODE_PATH. */
function startServer(app: string, env: Record<string, string>, cwd: string): SpawnedServer {
  const server = spawnServerProcess({
    entry: join(app, "dist/main.js"),
    cwd,
    // Nothing but the KV_* given: no NODE_PATH above all — pnpm's bin shims (vitest's too) set it
    // to the repository's node_modules, and lmdb loads its native binary with require, which
    // would find it there.
    env: { PATH: undefined, KV_HOST: undefined, KV_LOG_LEVEL: undefined, KV_STORE: undefined, ...env },
    readyTimeoutMs: 20_000,
  });
  servers.push(server);
  return server;
}

/** One request to the server at `base`, bounded; the reply's status and JSON body. */
async function send(base: string, method: "GET" | "PUT", key: string, body?: unknown) {
  const res = await fetch(new URL(`/v1/kv/${key}`, base), {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json() };
}

describe("the bundle (pnpm deploy of @kv/server-app), copied out of the repository", () => {
  it("holds dist/main.js, the workspace packages' dist and lmdb's prebuilt binary, with no link out of the copy", async () => {
    expect(existsSync(join(bundle, "dist/main.js"))).toBe(true);
    for (const name of ["rpc", "server", "store-lmdb", "store-etcd"]) {
      const dir = realpathSync(join(bundle, "node_modules/@kv", name));
      expect(dir.startsWith(`${bundle}/`)).toBe(true);
      expect(existsSync(join(dir, "dist/index.js"))).toBe(true);
    }
    // Resolved in a clean process: this one has the repository's node_modules on NODE_PATH.
    const binary = `@lmdb/lmdb-${process.platform}-${process.arch}/package.json`;
    const { stdout } = await run(
      process.execPath,
      ["-p", `require("lmdb"); require("node:module").createRequire(require.resolve("lmdb")).resolve("${binary}")`],
      {
        cwd: realpathSync(join(bundle, "node_modules/@kv/store-lmdb")),
        env: {},
      },
    );
    expect(stdout.trim().startsWith(`${bundle}/`)).toBe(true);
    // pnpm's layout is symlinks: every one must land inside the copy.
    const links = readdirSync(bundle, { recursive: true, withFileTypes: true }).filter((e) => e.isSymbolicLink());
    expect(links.length).toBeGreaterThan(0);
    const outside = links.map((e) => join(e.parentPath, e.name)).filter((p) => !realpathSync(p).startsWith(`${bundle}/`));
    expect(outside).toEqual([]);
  });

  it("serves a put and a get on KV_STORE=lmdb:<dir> and exits 0 on SIGTERM", async () => {
    const data = join(scratch, "data");
    const server = startServer(bundle, { KV_STORE: `lmdb:${data}` }, scratch);
    const base = await server.listening;
    expect(new URL(base).hostname).toBe("127.0.0.1");
    expect(await send(base, "PUT", "greeting", { value: "hello", version: 0 })).toEqual({
      status: 200,
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    expect(await send(base, "PUT", "greeting", { value: "hi", version: 0 })).toEqual({ status: 409, body: { err: "ErrVersion" } });
    expect(await send(base, "GET", "greeting")).toEqual({
      status: 200,
      body: { err: "OK", value: "hello", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
    expect(await server.stop()).toBe(0);
    expect(existsSync(join(data, "data.mdb"))).toBe(true);
  }, 60_000);

  it("keeps the default store, kv-data under the working directory, across a restart", async () => {
    const cwd = mkdtempSync(join(scratch, "cwd-"));
    const first = startServer(bundle, {}, cwd);
    const base = await first.listening;
    expect(await send(base, "GET", "greeting")).toEqual({ status: 404, body: { err: "ErrNoKey" } });
    expect(await send(base, "PUT", "greeting", { value: "hello", version: 0 })).toEqual({
      status: 200,
      body: { err: "OK", version: 1, revision: expect.any(Number) },
    });
    expect(await first.stop()).toBe(0);
    expect(existsSync(join(cwd, "kv-data/data.mdb"))).toBe(true);

    const second = startServer(bundle, {}, cwd);
    expect(await send(await second.listening, "GET", "greeting")).toEqual({
      status: 200,
      body: { err: "OK", value: "hello", version: 1, modRevision: expect.any(Number), createRevision: expect.any(Number) },
    });
    expect(await second.stop()).toBe(0);
  }, 60_000);

  // The control for the two runs above: they used the copy's own node_modules, not something
  // found outside it, since a copy lacking one package does not start.
  it("does not start from a copy that lacks @kv/store-lmdb", async () => {
    const broken = join(scratch, "broken");
    await run("cp", ["-r", bundle, broken], { timeout: 60_000 });
    rmSync(join(broken, "node_modules/@kv/store-lmdb"));
    const server = startServer(broken, { KV_STORE: "memory" }, scratch);
    expect(await server.exited).not.toBe(0);
    expect(server.stderr()).toContain("@kv/store-lmdb");
  }, 60_000);
});
