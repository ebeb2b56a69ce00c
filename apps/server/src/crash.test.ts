import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Clerk, createClerk } from "@kv/clerk";
import type { GetResult, PutResult } from "@kv/rpc";
import { assertLinearizable, createRandom, type Event, recordHistory, type ServerProcess, startServerProcess, testSeed } from "@kv/testkit";
import { describe, expect, it, onTestFinished } from "vitest";

const WRITERS = 16;
const CYCLES = 20;
const OPS_PER_WRITER_PER_CYCLE = 12;
const KEYS = ["a", "b", "c", "d", "e", "f", "g", "h"];

/** A port free a moment ago: every incarnation of the server listens on it, so clerks keep one endpoint. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("the built server on LMDB, killed with SIGKILL at random moments", () => {
  it(`keeps every acknowledged put through ${CYCLES} crashes and restarts, and the whole history is linearizable`, async () => {
    const seed = testSeed();
    const random = createRandom(seed);
    const dir = mkdtempSync(join(tmpdir(), "kv-crash-"));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const env = { KV_STORE: `lmdb:${dir}`, KV_PORT: String(await freePort()) };
    let server: ServerProcess = await startServerProcess({ env });
    onTestFinished(() => server.kill());

    const clerks: Clerk[] = Array.from({ length: WRITERS }, () =>
      createClerk({ endpoints: [server.url], attemptTimeoutMs: 2_000, backoff: { baseMs: 5, maxMs: 100 } }),
    );
    onTestFinished(() => Promise.all(clerks.map((c) => c.close())).then(() => undefined));
    // Values must be unique across cycles (recordHistory names them by client and op): the
    // cycle goes in front, in what is written and in what the history says was written.
    let cycle = 0;
    let started = 0;
    let killAt = -1;
    let crash: Promise<void> | undefined;
    let crashes = 0;
    const execute = (c: number, op: Event["op"]): Promise<GetResult | PutResult> => {
      // The server dies at a random op of the cycle, with the writers' other ops in flight.
      if (started++ === killAt) {
        crash = (async () => {
          await server.kill();
          crashes++;
          server = await startServerProcess({ env });
        })();
      }
      const clerk = clerks[c] as Clerk;
      return op.kind === "get" ? clerk.get(op.key) : clerk.put(op.key, `${cycle}:${op.value}`, op.version);
    };

    const history: Event[] = [];
    const reader = clerks[0] as Clerk;
    /** Reads every key from the server now up, into the history: each acknowledged put so far is there, at least. */
    const readBack = async (when: string) => {
      for (const key of KEYS) {
        const acked = history.filter((e) => e.op.key === key && e.op.kind === "put" && e.output?.err === "OK");
        const newest = acked.reduce((n, e) => Math.max(n, (e.output as { version: number }).version), 0);
        const call = performance.now();
        const now = await reader.get(key);
        history.push({ client: WRITERS, op: { kind: "get", key }, call, return: performance.now(), output: now });
        if (newest === 0) continue;
        expect(now.err, `seed ${seed}, ${when}: ${key}`).toBe("OK");
        expect((now as { version: number }).version, `seed ${seed}, ${when}: ${key}`).toBeGreaterThanOrEqual(newest);
      }
    };
    for (; cycle < CYCLES; cycle++) {
      started = 0;
      killAt = Math.floor(random() * WRITERS * OPS_PER_WRITER_PER_CYCLE * 0.8);
      const events = await recordHistory({
        clients: WRITERS,
        opsPerClient: OPS_PER_WRITER_PER_CYCLE,
        keys: KEYS,
        putRate: 0.7,
        seed: seed * 31 + cycle,
        now: () => performance.now(),
        execute,
      });
      await crash;
      history.push(...events.map((e) => (e.op.kind === "put" ? { ...e, op: { ...e.op, value: `${cycle}:${e.op.value}` } } : e)));
      await readBack(`after crash ${cycle + 1}`); // the server that answers is the one started after the crash
    }
    expect(crashes).toBe(CYCLES);
    assertLinearizable(history, { seed });
  }, 240_000);
});
