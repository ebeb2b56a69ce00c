import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const script = fileURLToPath(new URL("../scripts/bundle.mjs", import.meta.url));
const repo = realpathSync(fileURLToPath(new URL("../../../", import.meta.url)));

// A scratch directory outside the repository holds a copy of the bundle (the original is deleted),
// so the server can only load what the bundle itself carries.
let scratch: string;
let bundle: string;
const children: ChildProcess[] = [];

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

afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL");
});
afterAll(() => {
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
});

/** `node <app>/dist/main.js` in `cwd`, with no environment but the `KV_*` variables given. */
function startServer(app: string, env: Record<string, string>, cwd: string) {
  const child = spawn(process.execPath, [join(app, "dist/main.js")], {
    cwd,
    // Not even NODE_PATH: pnpm's bin shims (vitest's too) set it to the repository's node_modules,
    // and lmdb loads its native binary with require, which would find it there.
    env: { KV_PORT: "0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const listening = new Promise<URL>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line within 20 s: ${stdout}${stderr}`)), 20_000);
    child.stdout.on("data", () => {
      const match = /Server listening at (http:\/\/[^"\s]+)/.exec(stdout);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(new URL(match[1]));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before listening: ${stderr}`));
    });
  });
  listening.catch(() => {}); // not awaited by the test that expects no start
  return { exited, listening, stderr: () => stderr, stop: () => child.kill("SIGTERM") };
}

/** One request to the server at `base`, bounded; the reply's status and JSON body. */
async function send(base: URL, method: "GET" | "PUT", key: string, body?: unknown) {
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
    expect(base.hostname).toBe("127.0.0.1");
    expect(await send(base, "PUT", "greeting", { value: "hello", version: 0 })).toEqual({ status: 200, body: { err: "OK", version: 1 } });
    expect(await send(base, "PUT", "greeting", { value: "hi", version: 0 })).toEqual({ status: 409, body: { err: "ErrVersion" } });
    expect(await send(base, "GET", "greeting")).toEqual({ status: 200, body: { err: "OK", value: "hello", version: 1 } });
    server.stop();
    expect(await server.exited).toBe(0);
    expect(existsSync(join(data, "data.mdb"))).toBe(true);
  }, 60_000);

  it("keeps the default store, kv-data under the working directory, across a restart", async () => {
    const cwd = mkdtempSync(join(scratch, "cwd-"));
    const first = startServer(bundle, {}, cwd);
    const base = await first.listening;
    expect(await send(base, "GET", "greeting")).toEqual({ status: 404, body: { err: "ErrNoKey" } });
    expect(await send(base, "PUT", "greeting", { value: "hello", version: 0 })).toEqual({ status: 200, body: { err: "OK", version: 1 } });
    first.stop();
    expect(await first.exited).toBe(0);
    expect(existsSync(join(cwd, "kv-data/data.mdb"))).toBe(true);

    const second = startServer(bundle, {}, cwd);
    expect(await send(await second.listening, "GET", "greeting")).toEqual({ status: 200, body: { err: "OK", value: "hello", version: 1 } });
    second.stop();
    expect(await second.exited).toBe(0);
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
