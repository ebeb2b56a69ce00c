// Clerk put throughput over loopback against the built server: 64 concurrent callers on one
// Clerk, each updating its own key, vs raw undici requests (same pool settings) to the same
// server in the same run. Then the ErrMaybe rates that put ids buy, over the simulated network.
// Prints one JSON line per figure.
import { kvPath, type Transport } from "@kv/rpc";
import { KVServer, MemoryStore } from "@kv/server";
import { recordHistory, SimNetwork, startServerProcess } from "@kv/testkit";
import { Pool } from "undici";
import { Clerk, createClerk } from "../src/clerk";

const CALLERS = 64;
const WARMUP_MS = 2_000;
const MEASURED_MS = Number(process.env.BENCH_SECONDS ?? 10) * 1000;

/** Runs `CALLERS` loops of `op` for `ms`; returns completed ops per second. */
async function measure(ms: number, op: (caller: number, n: number) => Promise<void>): Promise<number> {
  const end = performance.now() + ms;
  let done = 0;
  await Promise.all(
    Array.from({ length: CALLERS }, async (_, caller) => {
      for (let n = 0; performance.now() < end; n++) {
        await op(caller, n);
        done++;
      }
    }),
  );
  return done / (ms / 1000);
}

const server = await startServerProcess();
try {
  const pool = new Pool(server.url, { connections: 128, pipelining: 1 });
  const raw = (run: string) => async (caller: number, n: number) => {
    const res = await pool.request({
      method: "PUT",
      path: kvPath(`raw-${run}-${caller}`),
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ value: "v".repeat(100), version: n, id: crypto.randomUUID() }),
    });
    await res.body.dump();
    if (res.statusCode !== 200) throw new Error(`raw put got ${res.statusCode}`);
  };
  const clerk = createClerk({ endpoints: [server.url] });
  const viaClerk = (run: string) => async (caller: number, n: number) => {
    const r = await clerk.put(`clerk-${run}-${caller}`, "v".repeat(100), n);
    if (r.err !== "OK") throw new Error(`clerk put got ${r.err}`);
  };
  await measure(WARMUP_MS, raw("warm"));
  await measure(WARMUP_MS, viaClerk("warm"));
  const baselineOps = await measure(MEASURED_MS, raw("measured"));
  const clerkOps = await measure(MEASURED_MS, viaClerk("measured"));
  console.log(
    JSON.stringify({
      bench: "clerk put, 64 callers, loopback",
      baselineOps: Math.round(baselineOps),
      clerkOps: Math.round(clerkOps),
      ratio: Number((clerkOps / baselineOps).toFixed(3)),
    }),
  );
  await clerk.close();
  await pool.close();
} finally {
  await server.stop();
}

/** ErrMaybe among puts at 30 % reply loss, with the put ids the clerk sends and without them. */
async function errMaybeRate(keys: "own" | "shared", useIds: boolean): Promise<{ puts: number; errMaybe: number }> {
  let puts = 0;
  let errMaybe = 0;
  for (let seed = 1; seed <= 10; seed++) {
    const net = new SimNetwork(new KVServer(new MemoryStore()), { seed, replyLoss: 0.3 });
    const clerks = Array.from({ length: 10 }, (_, c) => {
      const t = net.transport(c);
      const stripped: Transport = {
        get: (k, o) => t.get(k, o),
        put: (r, o) => t.put({ ...r, id: undefined }, o),
        delete: (r, o) => t.delete({ ...r, id: undefined }, o),
        close: () => t.close(),
      };
      return new Clerk(useIds ? t : stripped, { clock: net, attemptTimeoutMs: 100 });
    });
    // One writer per key puts versions 0, 1, 2, … in turn; the shared key gets the usual mix.
    const history =
      keys === "own"
        ? (
            await Promise.all(
              clerks.map(async (clerk, c) => {
                const out = [];
                for (let v = 0; v < 30; v++) out.push({ output: await clerk.put(`own-${c}`, "v", v) });
                return out;
              }),
            )
          ).flat()
        : await recordHistory({
            clients: 10,
            opsPerClient: 30,
            keys: ["hot"],
            putRate: 1,
            seed,
            now: () => net.now(),
            execute: (c, op) => {
              const clerk = clerks[c] as Clerk;
              return op.kind === "get" ? clerk.get(op.key) : clerk.put(op.key, op.value, op.version);
            },
          });
    puts += history.length;
    errMaybe += history.filter((e) => e.output?.err === "ErrMaybe").length;
  }
  return { puts, errMaybe };
}
for (const keys of ["own", "shared"] as const) {
  const withIds = await errMaybeRate(keys, true);
  const withoutIds = await errMaybeRate(keys, false);
  console.log(
    JSON.stringify({
      bench: `ErrMaybe at 30 % reply loss, 10 writers, ${keys === "own" ? "one key each" : "one shared key"}`,
      puts: withIds.puts,
      errMaybeWithIds: withIds.errMaybe,
      errMaybeWithoutIds: withoutIds.errMaybe,
      rateWithIds: Number((withIds.errMaybe / withIds.puts).toFixed(4)),
      rateWithoutIds: Number((withoutIds.errMaybe / withoutIds.puts).toFixed(4)),
    }),
  );
}
