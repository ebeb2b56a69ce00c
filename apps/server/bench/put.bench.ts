// HTTP conditional-put throughput: a bare Fastify route over a Map (the ceiling of this stack on
// this machine) and the kv app on the memory store, in one process, on 127.0.0.1.
// `pnpm bench` prints one JSON line: { baselineRps, kvRps, ratio, p99Ms }.
import { MemoryStore } from "@kv/server";
import Fastify, { type FastifyInstance } from "fastify";
import { buildApp } from "../src/app";
import { parseConfig } from "../src/config";

import { CONNECTIONS, createPuts, MEASURED_SECONDS, WARMUP_SECONDS } from "./create-puts";

async function bareFastify(): Promise<FastifyInstance> {
  const app = Fastify();
  const map = new Map<string, string>();
  app.put<{ Params: { key: string }; Body: { value: string } }>("/v1/kv/:key", async (request) => {
    map.set(request.params.key, request.body.value);
    return { err: "OK", version: 1 };
  });
  return app;
}

async function run(app: FastifyInstance, label: string) {
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  try {
    await createPuts(url, `${label}-warmup`, WARMUP_SECONDS);
    return await createPuts(url, label, MEASURED_SECONDS);
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
