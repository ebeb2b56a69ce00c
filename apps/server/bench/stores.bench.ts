// Durable and distributed puts: the kv app on the memory, LMDB and etcd stores, one after the
// other in one run, 64 connections each creating fresh keys over HTTP on 127.0.0.1. etcd is
// Debian's etcd-server, one member, started here in a temporary directory.
// `pnpm bench` prints one JSON line: { memoryRps, lmdbRps, etcdRps, lmdbToMemory, … }.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryStore, type Store } from "@kv/server";
import { openEtcdStore } from "@kv/store-etcd";
import { openLmdbStore } from "@kv/store-lmdb";
import { startEtcdCluster } from "@kv/testkit";
import type autocannon from "autocannon";
import { buildApp } from "../src/app";
import { parseConfig } from "../src/config";
import { CONNECTIONS, createPuts, MEASURED_SECONDS, WARMUP_SECONDS } from "./create-puts";

/** The kv app on `store`, under the load of `createPuts`, after a warm-up; closes the store. */
async function measure(store: Store, label: string) {
  const app = await buildApp(parseConfig({ KV_LOG_LEVEL: "warn" }, []), store);
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  try {
    await createPuts(url, `${label}-warmup`, WARMUP_SECONDS);
    return await createPuts(url, label, MEASURED_SECONDS);
  } finally {
    await app.close();
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
