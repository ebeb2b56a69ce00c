import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { type ServerProcess, startServerProcess } from "@kv/testkit";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

const BIN = fileURLToPath(new URL("../dist/bin.js", import.meta.url));

let server: ServerProcess;
beforeAll(async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} does not exist: build @kv/cli first (pnpm build)`);
  server = await startServerProcess();
});
afterAll(async () => void (await server.stop()));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts the built `kv` with these arguments; KV_ENDPOINTS points at the test server unless `env` says otherwise. */
function start(args: string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH, KV_ENDPOINTS: server.url, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (chunk) => (stdout += chunk));
  child.stderr?.on("data", (chunk) => (stderr += chunk));
  const done = new Promise<Run>((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
  onTestFinished(() => void child.kill("SIGKILL"));
  return { child, done };
}

const kv = (args: string[], env?: Record<string, string>) => start(args, env).done;

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "kv-cli-"));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function until(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  for (const started = Date.now(); !condition(); await sleep(20)) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
  }
}

describe("kv get / put", () => {
  it("puts and gets, with exit codes ErrNoKey 3 and ErrVersion 4", async () => {
    expect(await kv(["get", "cli-a"])).toMatchObject({ code: 3, stdout: "", stderr: expect.stringContaining("ErrNoKey") });
    expect(await kv(["put", "cli-a", "hello"])).toEqual({ code: 0, stdout: "1\n", stderr: "" });
    expect(await kv(["get", "cli-a"])).toEqual({ code: 0, stdout: "hello\n", stderr: "" });
    expect(await kv(["put", "cli-a", "late", "--version", "0"])).toMatchObject({ code: 4, stderr: expect.stringContaining("ErrVersion") });
    expect(await kv(["put", "cli-a", "next", "--version", "1"])).toMatchObject({ code: 0, stdout: "2\n" });
    expect(await kv(["put", "cli-a", "over"])).toMatchObject({ code: 0, stdout: "3\n" }); // no --version: over whatever is there
    expect(await kv(["put", "cli-absent", "v", "--version", "4"])).toMatchObject({ code: 3, stderr: expect.stringContaining("ErrNoKey") });
  });

  it("prints one JSON object per result with --json", async () => {
    expect(await kv(["--json", "get", "cli-j"])).toEqual({ code: 3, stdout: '{"err":"ErrNoKey"}\n', stderr: "" });
    expect(await kv(["put", "cli-j", "v", "--json"])).toEqual({
      code: 0,
      stdout: expect.stringMatching(/^\{"err":"OK","version":1,"revision":\d+\}\n$/),
      stderr: "",
    });
    expect(await kv(["get", "cli-j", "--json"])).toEqual({
      code: 0,
      stdout: expect.stringMatching(/^\{"err":"OK","value":"v","version":1,"modRevision":\d+,"createRevision":\d+\}\n$/),
      stderr: "",
    });
    expect(await kv(["put", "cli-j", "w", "--version", "0", "--json"])).toEqual({ code: 4, stdout: '{"err":"ErrVersion"}\n', stderr: "" });
  });

  it("deletes with kv del: the revision on stdout, 0; at another version 4; absent 3", async () => {
    await kv(["put", "cli-del", "v"]);
    expect(await kv(["del", "cli-del", "--version", "2"])).toEqual({
      code: 4,
      stdout: "",
      stderr: "kv: cli-del: ErrVersion (the key is at another version)\n",
    });
    expect(await kv(["del", "cli-del", "--version", "1"])).toEqual({ code: 0, stdout: expect.stringMatching(/^\d+\n$/), stderr: "" });
    expect(await kv(["del", "cli-del"])).toEqual({ code: 3, stdout: "", stderr: "kv: cli-del: ErrNoKey (no such key)\n" });
    await kv(["put", "cli-del", "v"]);
    expect(await kv(["del", "cli-del", "--json"])).toEqual({
      code: 0,
      stdout: expect.stringMatching(/^\{"err":"OK","revision":\d+\}\n$/),
      stderr: "",
    });
    expect(await kv(["del"])).toMatchObject({ code: 2 });
  });

  it("takes a value that starts with a dash after --, options before the command, and lets a flag win over its variable", async () => {
    expect(await kv(["put", "cli-dash", "--", "-5"])).toMatchObject({ code: 0 });
    expect(
      await kv(["--endpoints", server.url, "lock", "cli-dash-lock", "--", "true"], { KV_ENDPOINTS: "http://127.0.0.1:1" }),
    ).toMatchObject({ code: 0 });
    expect(await kv(["get", "cli-dash", "--endpoints", server.url], { KV_ENDPOINTS: "http://127.0.0.1:1" })).toMatchObject({
      code: 0,
      stdout: "-5\n",
    });
  });

  it("takes the token from KV_TOKEN or --token, and fails with 1 on a wrong one", async () => {
    const secured = await startServerProcess({ env: { KV_AUTH_TOKEN: "s3cret" } });
    onTestFinished(async () => void (await secured.stop()));
    expect(await kv(["put", "cli-t", "v"], { KV_ENDPOINTS: secured.url, KV_TOKEN: "s3cret" })).toMatchObject({ code: 0 });
    expect(await kv(["get", "cli-t", "--endpoints", secured.url, "--token", "s3cret"])).toMatchObject({ code: 0, stdout: "v\n" });
    expect(await kv(["get", "cli-t"], { KV_ENDPOINTS: secured.url, KV_TOKEN: "wrong" })).toMatchObject({
      code: 1,
      stderr: expect.stringContaining("bearer token"),
    });
    expect(await kv(["get", "cli-t", "--json"], { KV_ENDPOINTS: secured.url, KV_TOKEN: "wrong" })).toMatchObject({
      code: 1,
      stdout: expect.stringContaining('{"err":"Error","code":"ERR_KV_UNAUTHORIZED"'),
    });
  });

  it("gives up after --timeout when no server answers: get fails with 1, put says ErrMaybe with 5", async () => {
    const nowhere = { KV_ENDPOINTS: "http://127.0.0.1:1" };
    expect(await kv(["get", "k", "--timeout", "500ms"], nowhere)).toMatchObject({ code: 1, stderr: expect.stringContaining("no answer") });
    expect(await kv(["put", "k", "v", "--timeout", "500ms", "--json"], nowhere)).toMatchObject({ code: 5, stdout: '{"err":"ErrMaybe"}\n' });
  });

  it.each([
    [[], "no command given"],
    [["frob"], 'unknown command "frob"'],
    [["get"], "get takes <key>"],
    [["put", "k"], "put takes <key> <value>"],
    [["put", "k", "v", "--version", "-1"], "--version"],
    [["put", "k", "v", "--version", "1.5"], "--version must be an integer"],
    [["get", "k", "--bogus"], "bogus"],
    [["get", "k", "--timeout", "soon"], "--timeout must be a duration"],
    [["lock", "k"], "lock needs a command after --"],
    [["lock", "k", "--ttl", "0s", "--", "true"], "--ttl must be more than 0"],
    [["watch", "k", "--count", "0"], "--count must be an integer"],
    [["get", "k", "--endpoints", "not a url"], "endpoint must be an http(s) URL"],
    [["get", "k", "--version", "3"], "get takes no --version"],
    [["lock", "k", "--ttl", "2ms", "--", "true"], "--ttl"],
  ])("refuses %j with usage exit code 2", async (args, message) => {
    const run = await kv(args);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(message);
    expect(run.stderr).toContain("kv --help");
  });

  it("prints its usage with --help, and exits 0", async () => {
    expect(await kv(["--help"])).toMatchObject({ code: 0, stdout: expect.stringContaining("kv lock <key> [--ttl 15s] -- <command…>") });
  });
});

describe("kv watch", () => {
  it("prints the value now, then each change as it comes", async () => {
    await kv(["put", "cli-w", "one"]);
    const watching = start(["watch", "cli-w", "--count", "3"]);
    let out = "";
    watching.child.stdout?.on("data", (chunk) => (out += chunk));
    await until(() => out === "one\n", "the first value");
    await kv(["put", "cli-w", "two"]);
    await until(() => out === "one\ntwo\n", "the second value");
    await kv(["put", "cli-w", "three"]);
    expect(await watching.done).toEqual({ code: 0, stdout: "one\ntwo\nthree\n", stderr: "" });
  });

  it("waits for an absent key to appear, and stops with 0 on SIGTERM", async () => {
    const watching = start(["watch", "cli-w-new", "--json"]);
    let out = "";
    watching.child.stdout?.on("data", (chunk) => (out += chunk));
    await until(() => out === '{"err":"ErrNoKey"}\n', "the absent state");
    await kv(["put", "cli-w-new", "here"]);
    await until(() => out.includes('"value":"here"'), "the new key");
    watching.child.kill("SIGTERM");
    expect(await watching.done).toEqual({
      code: 0,
      stdout: expect.stringMatching(
        /^\{"err":"ErrNoKey"\}\n\{"err":"OK","value":"here","version":1,"modRevision":\d+,"createRevision":\d+\}\n$/,
      ),
      stderr: "",
    });
  });
});

describe("kv lock", () => {
  /** How many long-poll reads wait on `url`'s server now. */
  async function waiters(url = server.url): Promise<number> {
    const text = await fetch(`${url}/metrics`).then((r) => r.text());
    return Number(/^kv_waiters (\d+)$/m.exec(text)?.[1]);
  }

  it("runs the commands of two concurrent invocations one after the other, each with a larger token, and exits with each command's code", async () => {
    const dir = tempDir();
    const log = join(dir, "log");
    const go = join(dir, "go");
    // The first holds the lock until the test says so: the second is waiting by then, for sure.
    const first = start([
      "lock",
      "cli-lock-seq",
      "--",
      "sh",
      "-c",
      `echo "a start $KV_LOCK_TOKEN" >> ${log}; while [ ! -f ${go} ]; do sleep 0.05; done; echo "a end" >> ${log}`,
    ]);
    await until(() => existsSync(log), "the first command to start");
    const before = await waiters();
    const second = start([
      "lock",
      "cli-lock-seq",
      "--",
      "sh",
      "-c",
      `echo "b start $KV_LOCK_TOKEN" >> ${log}; echo "b end" >> ${log}; exit 3`,
    ]);
    await expect.poll(waiters, { timeout: 20_000 }).toBe(before + 1);
    expect(readFileSync(log, "utf8")).not.toContain("b start");
    writeFileSync(go, "");
    expect((await first.done).code).toBe(0);
    expect((await second.done).code).toBe(3);
    const lines = readFileSync(log, "utf8")
      .trim()
      .split("\n")
      .map((l) => l.split(" "));
    expect(lines.map((l) => `${l[0]} ${l[1]}`)).toEqual(["a start", "a end", "b start", "b end"]);
    expect(Number(lines[2]?.[2])).toBeGreaterThan(Number(lines[0]?.[2]));
  });

  it("hands a killed kv's lock to the next kv lock once the TTL has passed", async () => {
    const dir = tempDir();
    const held = join(dir, "held");
    const first = start([
      "lock",
      "cli-lock-kill",
      "--ttl",
      "2s",
      "--",
      "sh",
      "-c",
      `echo "$$ $KV_LOCK_TOKEN" > ${held}.tmp; mv ${held}.tmp ${held}; exec sleep 60`,
    ]);
    await until(() => existsSync(held), "the first command to start");
    const [commandPid, firstToken] = readFileSync(held, "utf8").trim().split(" ").map(Number) as [number, number];
    onTestFinished(() => void (() => process.kill(commandPid, "SIGKILL"))());
    first.child.kill("SIGKILL"); // kv dies; its command runs on, orphaned, and nobody renews the lease
    const holderId = (await kv(["get", "cli-lock-kill"])).stdout.trim();
    expect(holderId).toMatch(/;ttl=2000$/);
    const before = await waiters();
    const second = start(["lock", "cli-lock-kill", "--ttl", "2s", "--", "sh", "-c", "echo $KV_LOCK_TOKEN"]);
    await expect.poll(waiters, { timeout: 20_000 }).toBe(before + 1); // it waits…
    expect((await kv(["get", "cli-lock-kill"])).stdout.trim()).toBe(holderId); // …while the dead kv's lease runs out
    const result = await second.done;
    expect(result.code).toBe(0);
    expect(Number(result.stdout.trim())).toBeGreaterThan(firstToken);
  });

  it("stops the command on SIGTERM, releases the lock, and exits with the command's code", async () => {
    const dir = tempDir();
    const mark = join(dir, "mark");
    const run = start([
      "lock",
      "cli-lock-term",
      "--",
      "sh",
      "-c",
      `trap 'echo stopped > ${mark}; exit 9' TERM; echo held > ${mark}; while true; do sleep 0.05; done`,
    ]);
    await until(() => existsSync(mark), "the command to start");
    run.child.kill("SIGTERM");
    expect((await run.done).code).toBe(9);
    expect(readFileSync(mark, "utf8")).toBe("stopped\n");
    expect(await kv(["get", "cli-lock-term"])).toMatchObject({ code: 0, stdout: "__unlocked\n" });
  });

  it("exits at once on a second SIGTERM, killing a command that ignores the first", async () => {
    const dir = tempDir();
    const pidFile = join(dir, "pid");
    const run = start([
      "lock",
      "cli-lock-twice",
      "--",
      "sh",
      "-c",
      `trap '' TERM; echo $$ > ${pidFile}.tmp; mv ${pidFile}.tmp ${pidFile}; while true; do sleep 0.05; done`,
    ]);
    await until(() => existsSync(pidFile), "the command to start");
    const commandPid = Number(readFileSync(pidFile, "utf8"));
    run.child.kill("SIGTERM"); // passed on to the command, which ignores it
    await sleep(300);
    expect(run.child.exitCode).toBeNull();
    run.child.kill("SIGTERM");
    expect((await run.done).code).toBe(143);
    const isAlive = () => {
      try {
        process.kill(commandPid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await until(() => !isAlive(), "the command to be killed", 5_000);
  });

  it("stops waiting for the lock on SIGTERM with 143, and leaves the holder in place", async () => {
    const dir = tempDir();
    const go = join(dir, "go");
    const holder = start(["lock", "cli-lock-wait", "--", "sh", "-c", `while [ ! -f ${go} ]; do sleep 0.05; done`]);
    await expect.poll(async () => (await kv(["get", "cli-lock-wait"])).stdout, { timeout: 20_000 }).not.toMatch(/^(__unlocked)?\n?$/);
    const before = await waiters();
    const waiting = start(["lock", "cli-lock-wait", "--", "true"]);
    await expect.poll(waiters, { timeout: 20_000 }).toBe(before + 1);
    waiting.child.kill("SIGTERM");
    expect((await waiting.done).code).toBe(143);
    writeFileSync(go, "");
    expect((await holder.done).code).toBe(0);
  });

  it("stops the command and exits 6 when the lease cannot be renewed", async () => {
    const paused = await startServerProcess();
    onTestFinished(async () => void (await paused.stop()));
    const dir = tempDir();
    const mark = join(dir, "mark");
    const run = start(
      [
        "lock",
        "cli-lock-lost",
        "--ttl",
        "2s",
        "--",
        "sh",
        "-c",
        `trap 'echo stopped > ${mark}; exit 0' TERM; echo held > ${mark}; while true; do sleep 0.1; done`,
      ],
      {
        KV_ENDPOINTS: paused.url,
      },
    );
    await until(() => existsSync(mark), "the command to start");
    paused.pause(); // renewals go unanswered
    const result = await run.done;
    paused.resume();
    expect(result.code).toBe(6);
    expect(result.stderr).toContain("lost the lock on cli-lock-lost");
    expect(readFileSync(mark, "utf8")).toBe("stopped\n");
  });

  it("exits 127 when the command cannot be run, and releases the lock", async () => {
    const run = await kv(["lock", "cli-lock-missing", "--", "/nonexistent/command"]);
    expect(run).toMatchObject({ code: 127, stderr: expect.stringContaining("cannot run /nonexistent/command") });
    expect(await kv(["get", "cli-lock-missing"])).toMatchObject({ code: 0, stdout: "__unlocked\n" });
  });
});
