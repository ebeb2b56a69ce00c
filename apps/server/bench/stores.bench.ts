// Durable and distributed puts: the kv app on the memory, LMDB and etcd stores, one after the
// other in one run, 64 connections each creating fresh keys over HTTP on 127.0.0.1. etcd is
// Debian's etcd-server, one member, started here in a temporary directory.
// `pnpm bench` prints one JSON line: { memoryRps, lmdbRps, etcdRps, lmdbToMemory, … }.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvPath } from "@kv/rpc";
import { MemoryStore, type Store } from "@kv/server";
import { openEtcdStore } from "@kv/store-etcd";
import { openLmdbStore } from "@kv/store-lmdb";
import { startEtcdCluster } from "@kv/testkit";
import autocannon from "autocannon";
import { buildApp } from "../src/app";
import { parseConfig } from "../src/config";

const CONNECTIONS = 64;
const WARMUP_SECONDS = 2;
const MEASURED_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

/** Each request creates a fresh key (version 0), so every put is an accepted write. */
async function measure(store: Store, label: string) {
  const app = await buildApp(parseConfig({ KV_LOG_LEVEL: "warn" }, []), store);
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  try {
    let n = 0;
    const once = async (seconds: number) => {
      const result = await autocannon({
        url,
        connections: CONNECTIONS,
        duration: seconds,
        requests: [
          {
            method: "PUT",
            headers: { "content-type": "application/json" },
            setupRequest: (req) => ({ ...req, path: kvPath(`${label}-${n++}`), body: JSON.stringify({ value: "v".repeat(100), version: 0 }) }),
          },
        ],
      });
      if (result.errors > 0 || result.non2xx > 0) throw new Error(`${label}: ${result.errors} errors, ${result.non2xx} non-2xx replies`);
      return result;
    };
    await once(WARMUP_SECONDS);
    return await once(MEASURED_SECONDS);
  } finally {
    await app.close(); // closes the store
  }
}

const dir = mkdtempSync(join(tmpdir(), "kv-bench-lmdb-"));
const etcd = await startEtcdCluster({ members: 1 });
try {
  const memory = await measure(new MemoryStore(), "memory");
  const lmdb = await measure(await openLmdbStore({ path: dir }), "lmdb");
  const onEtcd = await measure(await openEtcdStore({ endpoints: etcd.endpoints, prefix: "bench/" }), "etcd");
  const rps = (r: autocannon.Result) => Math.round(r.requests.average);
  console.log(
    JSON.stringify({
      bench: "HTTP PUT create, by store",
      connections: CONNECTIONS,
      seconds: MEASURED_SECONDS,
      memoryRps: rps(memory),
      lmdbRps: rps(lmdb),
      etcdRps: rps(onEtcd),
      lmdbToMemory: Number((lmdb.requests.average / memory.requests.average).toFixed(3)),
      etcdToMemory: Number((onEtcd.requests.average / memory.requests.average).toFixed(3)),
      p99Ms: { memory: memory.latency.p99, lmdb: lmdb.latency.p99, etcd: onEtcd.latency.p99 },
    }),
  );
} finally {
  await etcd.stop();
  rmSync(dir, { recursive: true, force: true });
}
