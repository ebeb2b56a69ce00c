// Writes a self-contained bundle of the server to <outdir>: dist/main.js, package.json and a
// node_modules with every production dependency — the workspace packages as copies of their
// published files (dist), npm packages with this machine's prebuilt binaries (lmdb's). Copy the
// directory to a machine with the same OS, CPU and libc and run `node <dir>/dist/main.js`.
//
//   pnpm --filter @kv/server-app bundle -- <outdir>     builds first; <outdir> absent or empty
//   node apps/server/scripts/bundle.mjs --no-build <outdir>   when everything is built already
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const usage = "usage: bundle.mjs [--no-build] <outdir>   (outdir must be absent or empty)";
const fail = (message) => {
  process.stderr.write(`bundle: ${message}\n`);
  process.exit(1);
};

let args;
try {
  // pnpm passes the `--` of `pnpm bundle -- <outdir>` on to the script.
  const argv = process.argv.slice(2);
  if (argv[0] === "--") argv.shift();
  args = parseArgs({ args: argv, options: { "no-build": { type: "boolean" } }, allowPositionals: true });
} catch (err) {
  fail(`${err.message}\n${usage}`);
}
if (args.positionals.length !== 1) fail(usage);
// pnpm runs package scripts in the package's directory; a relative path means where the user was.
const out = resolve(process.env.INIT_CWD ?? process.cwd(), args.positionals[0]);
if (existsSync(out) && readdirSync(out).length > 0) fail(`${out} is not empty`);

const root = fileURLToPath(new URL("../../../", import.meta.url));
const run = (command, commandArgs) => execFileSync(command, commandArgs, { cwd: root, stdio: "inherit" });

if (!args.values["no-build"]) {
  run(join(root, "node_modules/.bin/turbo"), ["run", "build", "--filter=@kv/server-app...", "--output-logs=errors-only"]);
}

// The pnpm running this script (npm_execpath), else the version the repository pins.
const execPath = process.env.npm_execpath;
const [pnpm, ...pnpmArgs] =
  execPath !== undefined && basename(execPath).startsWith("pnpm")
    ? /\.[cm]?js$/.test(execPath)
      ? [process.execPath, execPath]
      : [execPath]
    : ["npx", "-y", JSON.parse(readFileSync(join(root, "package.json"), "utf8")).packageManager];
// pnpm 10 deploys workspace packages only when they are injected (copied with their `files`,
// i.e. dist, rather than linked into the repository); the setting applies to this command alone.
run(pnpm, [...pnpmArgs, "--config.inject-workspace-packages=true", "--filter=@kv/server-app", "deploy", "--prod", out]);

// A missing build or a skipped optional dependency would only show when the server starts.
const required = ["dist/main.js", ...readdirSync(join(out, "node_modules/@kv")).map((name) => `node_modules/@kv/${name}/dist`)];
const missing = required.filter((path) => !existsSync(join(out, path)));
if (missing.length > 0) fail(`the bundle lacks ${missing.join(", ")}: build first (drop --no-build)`);
// Load lmdb with its native binary as the store does, in a process with an empty environment:
// pnpm's bin shims put the repository's node_modules on NODE_PATH, where require would find it.
try {
  execFileSync(process.execPath, ["-e", 'require("lmdb")'], {
    cwd: realpathSync(join(out, "node_modules/@kv/store-lmdb")),
    env: {},
    stdio: ["ignore", "ignore", "pipe"],
  });
} catch (err) {
  fail(
    `lmdb does not load from the bundle (is its prebuilt binary, @lmdb/lmdb-${process.platform}-${process.arch}, missing?):\n${err.stderr}`,
  );
}
process.stdout.write(`bundle: wrote ${out}; run it with: node ${join(out, "dist/main.js")}\n`);
