// HTTP conditional-put throughput: a bare Fastify route over a Map (the ceiling of this stack on
// this machine) and the kv app on the memory store, in one process, on 127.0.0.1.
// `pnpm bench` prints one JSON line: { baselineRps, kvRps, ratio, p99Ms }.
import { kvPath } from "@kv/rpc";
import { MemoryStore } from "@kv/server";
import autocannon from "autocannon";
import Fastify, { type FastifyInstance } from "fastify";
import { buildApp } from "../src/app";
import { parseConfig } from "../src/config";

const CONNECTIONS = 64;
const WARMUP_SECONDS = 2;
const MEASURED_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

async function bareFastify(): Promise<FastifyInstance> {
  const app = Fastify();
  const map = new Map<string, string>();
  app.put<{ Params: { key: string }; Body: { value: string } }>("/v1/kv/:key", async (request) => {
    map.set(request.params.key, request.body.value);
    return { err: "OK", version: 1 };
  });
  return app;
}

/** Each request creates a fresh key (version 0), so every put is an accepted write. */
async function measure(url: string, label: string, seconds: number) {
  let n = 0;
  const result = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    requests: [
      {
        method: "PUT",
        headers: { "content-type": "application/json" },
        setupRequest: (req) => ({
          ...req,
          path: kvPath(`${label}-${n++}`),
          body: JSON.stringify({ value: "v".repeat(100), version: 0 }),
        }),
      },
    ],
  });
  if (result.errors > 0 || result.non2xx > 0) {
    throw new Error(`${label}: ${result.errors} errors, ${result.non2xx} non-2xx replies`);
  }
  return result;
}

async function run(app: FastifyInstance, label: string) {
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  try {
    await measure(url, `${label}-warmup`, WARMUP_SECONDS);
    return await measure(url, label, MEASURED_SECONDS);
  } finally {
    await app.close();
  }
}

const baseline = await run(await bareFastify(), "baseline");
const kv = await run(await buildApp(parseConfig({ KV_LOG_LEVEL: "warn" }, []), new MemoryStore()), "kv");
console.log(
  JSON.stringify({
    bench: "HTTP PUT create, memory store",
    connections: CONNECTIONS,
    seconds: MEASURED_SECONDS,
    baselineRps: Math.round(baseline.requests.average),
    kvRps: Math.round(kv.requests.average),
    ratio: Number((kv.requests.average / baseline.requests.average).toFixed(3)),
    p99Ms: kv.latency.p99,
  }),
);
