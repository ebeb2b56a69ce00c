// As a user gets them: the packed tarballs of @kv/rpc, @kv/clerk, @kv/lock and @kv/cli installed
// with plain npm into a scratch project outside the monorepo (one install: npm installs run side
// by side slow each other down past their limits), and every README example run there against
// the built server, as ESM and as CommonJS; and the `kv` that npm links.
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

/** The code blocks of a README that start with `// example.mjs` or `// example.cjs`. */
async function examples(pkg: string): Promise<Array<{ file: string; code: string }>> {
  const readme = await readFile(join(packages, pkg, "README.md"), "utf8");
  return [...readme.matchAll(/```js\n(\/\/ (example\.[cm]js)[^\n]*\n[\s\S]*?)```/g)].map((m) => ({
    file: `${pkg}-${m[2]}`,
    code: m[1] as string,
  }));
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "kv-packed-"));
  const pnpm = process.env.npm_execpath;
  for (const pkg of ["rpc", "clerk", "lock", "cli"]) {
    // pnpm pack, not npm pack: it turns workspace: and catalog: versions into real ones.
    if (pnpm?.includes("pnpm")) await run(process.execPath, [pnpm, "pack", "--pack-destination", scratch], { cwd: join(packages, pkg) });
    else await run("npx", ["-y", "pnpm@10.34.8", "pack", "--pack-destination", scratch], { cwd: join(packages, pkg) });
  }
  const tarballs = (await readdir(scratch)).filter((f) => f.endsWith(".tgz"));
  await writeFile(join(scratch, "package.json"), JSON.stringify({ name: "scratch", private: true }));
  // From npm's cache when it can (the monorepo's install filled it): the registry is the slow part.
  await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", ...tarballs.map((t) => `./${t}`)], {
    cwd: scratch,
    timeout: 200_000,
  });
  server = await startServerProcess();
}, 240_000);

afterAll(async () => {
  await server?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("the packed packages, installed with npm", () => {
  it("have README examples in both module systems", async () => {
    const files = [...(await examples("clerk")), ...(await examples("lock"))].map((e) => e.file);
    expect(files).toEqual(["clerk-example.mjs", "clerk-example.cjs", "lock-example.mjs", "lock-example.cjs"]);
  });

  it.each([
    [
      "clerk",
      "example.mjs",
      /\{ err: 'ErrNoKey' \}\n\{ err: 'OK', version: 1, revision: \d+ \}\n\{ err: 'ErrVersion' \}\n\{ err: 'OK', version: 2, revision: \d+ \}/,
    ],
    [
      "clerk",
      "example.cjs",
      /\{ err: 'OK', version: 1, revision: \d+ \}\n\{ err: 'OK', version: 2, revision: \d+ \}\n\{ err: 'OK', version: 3, revision: \d+ \}/,
    ],
    ["lock", "example.mjs", /holding with token \d+\nreleased: true/],
    ["lock", "example.cjs", /^true$/m],
  ])("run the %s README's %s against a real server", async (pkg, name, expected) => {
    const example = (await examples(pkg)).find((e) => e.file === `${pkg}-${name}`);
    if (example === undefined) throw new Error(`no ${name} in the ${pkg} README`);
    await writeFile(join(scratch, example.file), example.code);
    const { stdout } = await run(process.execPath, [example.file], { cwd: scratch, env: { ...process.env, KV_URL: server.url } });
    expect(stdout).toMatch(expected);
  });

  it("give a working kv command, and the cli README's example runs", async () => {
    const kv = join(scratch, "node_modules", ".bin", "kv");
    const env = { ...process.env, KV_ENDPOINTS: server.url };
    expect((await run(kv, ["put", "packed-cli", "hello"], { env })).stdout).toBe("1\n");
    expect((await run(kv, ["get", "packed-cli", "--json"], { env })).stdout).toMatch(
      /^\{"err":"OK","value":"hello","version":1,"modRevision":\d+,"createRevision":\d+\}\n$/,
    );
    const readme = await readFile(join(packages, "cli", "README.md"), "utf8");
    const code = /```js\n(\/\/ example\.mjs[^\n]*\n[\s\S]*?)```/.exec(readme)?.[1];
    if (code === undefined) throw new Error("no example.mjs in the cli README");
    await writeFile(join(scratch, "cli-example.mjs"), code);
    expect((await run(process.execPath, ["cli-example.mjs"], { cwd: scratch, env })).stdout).toBe("no greeting yet\n");
  });
});
