// As a user gets it: the packed tarballs installed with plain npm into a scratch project outside
// the monorepo; the `kv` that npm links, and the README's example, run against the built server.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { type ServerProcess, startServerProcess } from "@kv/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const packages = join(import.meta.dirname, "..", "..");
let scratch: string;
let server: ServerProcess;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "kv-cli-packed-"));
  const pnpm = process.env.npm_execpath;
  for (const pkg of ["rpc", "clerk", "lock", "cli"]) {
    // pnpm pack, not npm pack: it turns workspace: and catalog: versions into real ones.
    if (pnpm?.includes("pnpm")) await run(process.execPath, [pnpm, "pack", "--pack-destination", scratch], { cwd: join(packages, pkg) });
    else await run("npx", ["-y", "pnpm@10.34.8", "pack", "--pack-destination", scratch], { cwd: join(packages, pkg) });
  }
  const tarballs = (await readdir(scratch)).filter((f) => f.endsWith(".tgz"));
  await writeFile(join(scratch, "package.json"), JSON.stringify({ name: "scratch", private: true }));
  await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", ...tarballs.map((t) => `./${t}`)], { cwd: scratch, timeout: 150_000 });
  server = await startServerProcess();
}, 180_000);

afterAll(async () => {
  await server?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("the packed @kv/cli, installed with npm", () => {
  it("gives a working kv command", async () => {
    const kv = join(scratch, "node_modules", ".bin", "kv");
    const env = { ...process.env, KV_ENDPOINTS: server.url };
    expect((await run(kv, ["put", "packed-cli", "hello"], { env })).stdout).toBe("1\n");
    expect((await run(kv, ["get", "packed-cli", "--json"], { env })).stdout).toBe('{"err":"OK","value":"hello","version":1}\n');
  });

  it("runs the README's example", async () => {
    const readme = await readFile(join(packages, "cli", "README.md"), "utf8");
    const code = /```js\n(\/\/ example\.mjs[^\n]*\n[\s\S]*?)```/.exec(readme)?.[1];
    if (code === undefined) throw new Error("no example.mjs in the README");
    await writeFile(join(scratch, "example.mjs"), code);
    const { stdout } = await run(process.execPath, ["example.mjs"], { cwd: scratch, env: { ...process.env, KV_ENDPOINTS: server.url } });
    expect(stdout).toBe("no greeting yet\n");
  });
});
