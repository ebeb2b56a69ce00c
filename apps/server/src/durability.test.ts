import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { describe, expect, it, onTestFinished } from "vitest";

const main = fileURLToPath(new URL("../dist/main.js", import.meta.url));
const SEQUENTIAL_PUTS = 10;
const CONNECTIONS = 64;
const CONCURRENT_PUTS = 640;

/** What the trace shows, in order: a sync that completed, a put's request read, or its reply. */
type Step = { kind: "sync" } | { kind: "request" | "reply"; fd: number };

/**
 * The steps of an `strace -f` log. A line is written when its call starts, unless another
 * thread's call comes first: then it ends `<unfinished ...>` and a `<... resumed>` line marks
 * the completion. So a reply's line marks when its write began, and a sync counts as done at
 * its complete line or its resumed line.
 */
function stepsOf(trace: string): Step[] {
  const steps: Step[] = [];
  const readingFd = new Map<string, number>(); // thread → the socket its unfinished read is on
  for (const line of trace.split("\n")) {
    // A read's data shows when it returns: on its resumed line, if another call came between.
    const unfinishedRead = /^(\d+) +read\((\d+), +<unfinished/.exec(line);
    if (unfinishedRead) readingFd.set(unfinishedRead[1] as string, Number(unfinishedRead[2]));
    const resumedRequest = /^(\d+) +<\.\.\. read resumed>"PUT \/v1\/kv\//.exec(line);
    if (resumedRequest) steps.push({ kind: "request", fd: readingFd.get(resumedRequest[1] as string) ?? -1 });
    if (/\b(fdatasync|fsync)\(\d+\)\s+= 0$/.test(line) || /<\.\.\. (fdatasync|fsync) resumed>.*= 0$/.test(line)) {
      steps.push({ kind: "sync" });
      continue;
    }
    const request = /^\d+ +read\((\d+), "PUT \/v1\/kv\//.exec(line);
    if (request) steps.push({ kind: "request", fd: Number(request[1]) });
    // A put's reply (a readiness reply says "ready"): its head and, in the same write, its body.
    const reply = /^\d+ +(?:write|writev)\((\d+), .*HTTP\/1\.1 200 OK.*"err\\":\\"OK\\",\\"version\\"/.exec(line);
    if (reply) steps.push({ kind: "reply", fd: Number(reply[1]) });
  }
  return steps;
}

/**
 * LMDB's durable commit, as the trace shows it: the data pages are synced (`fdatasync`), then the
 * 128-byte meta page that makes the commit current is written through the descriptor opened
 * `O_DSYNC`, by the same thread. Returns every meta-page write that breaks this: one through a
 * plain descriptor (lmdb-js's overlapping sync writes it so, and syncs afterwards), or one not
 * right after its thread's sync. `commits` counts the meta-page writes seen.
 */
function commitsOf(trace: string): { commits: number; broken: string[] } {
  const dsync = new Set<number>();
  const plain = new Set<number>();
  const lastCall = new Map<string, string>(); // thread → its previous traced call
  const opening = new Map<string, boolean>(); // thread → the O_DSYNC flag of its unfinished openat of data.mdb
  let commits = 0;
  const broken: string[] = [];
  const opened = (fd: number, isDsync: boolean) => (isDsync ? dsync : plain).add(fd);
  for (const line of trace.split("\n")) {
    const call = /^(\d+) +(?:<\.\.\. )?(\w+)/.exec(line);
    if (!call) continue;
    const [, thread, name] = call as unknown as [string, string, string];
    const open = /openat\(.*data\.mdb", ([A-Z_|]+)[^)]*\)\s+= (\d+)$/.exec(line);
    if (open) opened(Number(open[2]), (open[1] as string).includes("O_DSYNC"));
    const unfinishedOpen = /openat\(.*data\.mdb", ([A-Z_|]+).*<unfinished/.exec(line);
    if (unfinishedOpen) opening.set(thread, (unfinishedOpen[1] as string).includes("O_DSYNC"));
    const resumedOpen = /<\.\.\. openat resumed>.*= (\d+)$/.exec(line);
    if (resumedOpen && opening.has(thread)) opened(Number(resumedOpen[1]), opening.get(thread) as boolean);
    const meta = /pwrite64\((\d+), .*, 128, \d+\)/.exec(line);
    if (meta && (dsync.has(Number(meta[1])) || plain.has(Number(meta[1])))) {
      commits++;
      if (!dsync.has(Number(meta[1]))) broken.push(`meta page through a plain descriptor: ${line.slice(0, 80)}`);
      else if (lastCall.get(thread) !== "fdatasync") broken.push(`meta page not right after a sync: ${line.slice(0, 80)}`);
    }
    if (!line.includes("<unfinished")) lastCall.set(thread, name === "<" ? "" : name);
  }
  return { commits, broken };
}

/** For each reply, whether a sync completed between its request's read and its own start. */
function repliesAfterSync(steps: readonly Step[]): boolean[] {
  const readAt = new Map<number, number>(); // connection → where its pending request was read
  let lastSync = -1;
  const verdicts: boolean[] = [];
  steps.forEach((step, i) => {
    if (step.kind === "sync") lastSync = i;
    else if (step.kind === "request") readAt.set(step.fd, i);
    else verdicts.push(lastSync > (readAt.get(step.fd) ?? Number.POSITIVE_INFINITY));
  });
  return verdicts;
}

describe("the built server on LMDB, traced with strace", () => {
  it("answers each put only after a sync that followed its request, and lets concurrent puts share syncs", async () => {
    try {
      execFileSync("strace", ["-V"], { stdio: "pipe" });
    } catch (err) {
      throw new Error("this test needs strace: install Debian's strace package (apt-get install strace); .ci/run does", { cause: err });
    }
    const dir = mkdtempSync(join(tmpdir(), "kv-strace-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const traceFile = join(dir, "trace.txt");
    const child = spawn(
      "strace",
      [
        "-f",
        "-s",
        "512",
        "-e",
        "trace=openat,fdatasync,fsync,pwrite64,read,write,writev",
        "-e",
        "signal=none",
        "-o",
        traceFile,
        process.execPath,
        main,
      ],
      { env: { PATH: process.env.PATH, KV_STORE: `lmdb:${join(dir, "data")}`, KV_PORT: "0" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    onTestFinished(() => void child.kill("SIGKILL")); // strace; the server is stopped below
    const exited = new Promise((resolve) => child.once("exit", resolve));
    let output = "";
    const { url, pid } = await new Promise<{ url: string; pid: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no listening line: ${output}`)), 20_000);
      const collect = (chunk: Buffer) => {
        output += chunk;
        const match = /"pid":(\d+).*Server listening at (http:\/\/[^"\s]+)/.exec(output);
        if (match?.[1] && match[2]) {
          clearTimeout(timer);
          resolve({ pid: Number(match[1]), url: match[2] });
        }
      };
      child.stdout.on("data", collect);
      child.stderr.on("data", collect);
    });
    const pool = new Pool(url, { connections: CONNECTIONS });
    const put = async (key: string, version: number) => {
      const res = await pool.request({
        method: "PUT",
        path: `/v1/kv/${key}`,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ value: "v", version }),
      });
      expect(await res.body.json()).toEqual({ err: "OK", version: version + 1, revision: expect.any(Number) });
    };

    for (let version = 0; version < SEQUENTIAL_PUTS; version++) await put("one-writer", version);
    await Promise.all(Array.from({ length: CONCURRENT_PUTS }, (_, i) => put(`many-${i}`, 0)));
    await pool.close();
    process.kill(pid, "SIGTERM"); // the server itself (strace would detach on a signal of its own)
    await exited; // strace exits with its tracee

    const trace = readFileSync(traceFile, "utf8");
    // Every commit is LMDB's durable one: synced data, then the meta page through O_DSYNC.
    const { commits, broken } = commitsOf(trace);
    expect(commits).toBeGreaterThanOrEqual(SEQUENTIAL_PUTS);
    expect(broken).toEqual([]);
    const steps = stepsOf(trace);
    const verdicts = repliesAfterSync(steps);
    expect(verdicts).toHaveLength(SEQUENTIAL_PUTS + CONCURRENT_PUTS);
    // Every put, one at a time or 64 at once: a sync completed after its request was read and
    // before its reply began — its own commit's, or one that covered it.
    expect(verdicts.filter((isSynced) => !isSynced)).toHaveLength(0);
    // Puts that arrive while a commit syncs share the next one: far fewer syncs than puts.
    const lastSequentialReply = steps.findIndex(
      (s, i) => s.kind === "reply" && steps.slice(0, i + 1).filter((t) => t.kind === "reply").length === SEQUENTIAL_PUTS,
    );
    const burstSyncs = steps.slice(lastSequentialReply + 1).filter((s) => s.kind === "sync").length;
    expect(burstSyncs).toBeGreaterThan(0);
    expect(burstSyncs).toBeLessThanOrEqual(CONCURRENT_PUTS / 4);
  }, 60_000);
});
