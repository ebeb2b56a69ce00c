// S8: the kv server's memory (memory store). RSS before and after loading keys of 100-byte
// values (puts carry put ids, as the clerk's do: the store keeps each key's last id); then RSS
// before and after many distinct clients, each a new connection (`Connection: close`) making
// one put — client i updates loaded key i in place (same sizes), so the data does not grow and
// any growth is state kept per client. That server keeps completion records for a second only
// and is sampled once they expired: records are per write, not per client, and are measured
// apart — a second server takes puts with ids at full speed, keeping their records for a
// retention window, and is sampled with them, then again once they expired.
//
// RSS is read after a full GC, forced through the server's inspector: without it, the figure is
// mostly garbage the server has not collected yet (100 000 connections leave ~170 MiB of it,
// gone at the next full GC) and says nothing about what the server keeps.
import { kvPath } from "@kv/rpc";
import { Pool, request } from "undici";
import { createHttpClient } from "./clients";
import { openInspector } from "./inspector";
import { runLoad } from "./load";
import { type Resources, withResources } from "./resources";
import type { ScenarioResult } from "./results";
import type { Settings } from "./settings";
import { rssBytesOf, startKv } from "./systems";
import { conditionalPuts, KeySpace, VALUE } from "./workloads";

const WARMUP_KEYS = 10_000;
// "Flat": RSS grows by at most 1 % over the last nine tenths of the clients. State of 50 bytes
// per client would be 4.3 MiB over 90 000 clients, over 1 % of a server holding a million keys;
// below that is the noise of the heap's and the allocator's own sizing.
const FLAT_PERCENT = 1;
const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A gauge from the server's /metrics (prom-client reads them at scrape; the memory store drops expired records then). */
async function gauge(url: string, name: string): Promise<number> {
  const res = await request(`${url}/metrics`);
  const text = await res.body.text();
  const match = new RegExp(`^${name} (\\d+)`, "m").exec(text);
  if (res.statusCode !== 200 || match?.[1] === undefined) throw new Error(`no ${name} in ${url}/metrics (${res.statusCode})`);
  return Number(match[1]);
}
const heapUsedBytes = (url: string) => gauge(url, "nodejs_heap_size_used_bytes");
// The per-client server's records expire within this, before each sample.
const CLIENTS_RETENTION_MS = 500;

export async function s8(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  const { workers, memoryKeys: keys, memoryClients: clients } = settings;
  if (clients > keys) throw new Error(`S8 needs at least as many keys (${keys}) as clients (${clients})`);
  return withResources(async (r) => {
    const kv = r.add(await startKv("memory", { inspect: true, env: { KV_ID_RETENTION_MS: String(CLIENTS_RETENTION_MS) } }), (s) =>
      s.stop(),
    );
    const pid = kv.pids[0] as number;
    const inspector = r.add(await openInspector(kv.inspectorUrl as string), (i) => i.close());
    const client = r.add(createHttpClient(kv.url, workers), (c) => c.close());
    const perWorker = (n: number) => Math.ceil(n / workers);
    /** RSS as it is now, then RSS and heap used after a full GC. */
    const sample = async () => {
      await sleep(Math.max(settings.settleMs, CLIENTS_RETENTION_MS));
      if ((await gauge(kv.url, "kv_completion_records")) !== 0) throw new Error("S8: completion records left after their retention");
      const asIs = rssBytesOf(pid);
      await inspector.collectGarbage();
      await sleep(settings.settleMs); // V8 returns freed pages to the OS on a background thread
      return { asIs, rss: rssBytesOf(pid), heap: await heapUsedBytes(kv.url) };
    };

    // The same requests first on keys of their own, so the JIT and the heap are warm.
    await runLoad({
      workers,
      op: conditionalPuts(client, new KeySpace("warm-", WARMUP_KEYS, workers)),
      serverPids: [],
      count: perWorker(WARMUP_KEYS),
    });
    const empty = await sample();

    // A worker owning fewer keys than `perWorker` updates one of its keys again: in place, no growth.
    const space = new KeySpace("k", keys, workers);
    await runLoad({ workers, op: conditionalPuts(client, space), serverPids: [], count: perWorker(keys) });
    const loaded = await sample();

    // Each put its own connection: undici opens one per request when it carries Connection: close.
    // The first tenth of the clients brings the process to its steady state for this traffic (the
    // allocator's arenas, socket buffers: they grow with concurrent connections, not with
    // clients); state kept per client would grow on through the other nine tenths.
    const fresh = r.add(new Pool(kv.url, { connections: workers, pipelining: 1 }), (p) => p.close());
    let connections = 0;
    fresh.on("connect", () => connections++);
    let nextClient = 0;
    const connectClients = async (upTo: number) => {
      await runLoad({
        workers,
        serverPids: [],
        count: perWorker(upTo - nextClient),
        op: async () => {
          const i = nextClient++;
          if (i >= upTo) return undefined;
          const version = space.version(i);
          const res = await fresh.request({
            method: "PUT",
            path: kvPath(space.key(i)),
            headers: { "content-type": "application/json", connection: "close" },
            body: JSON.stringify({ value: VALUE, version, id: crypto.randomUUID() }),
          });
          const text = await res.body.text();
          if (res.statusCode !== 200) throw new Error(`client ${i}: PUT ${space.key(i)} at ${version}: ${res.statusCode} ${text}`);
          space.bump(i);
          return undefined;
        },
      });
      nextClient = upTo;
    };
    const firstClients = Math.round(clients / 10);
    await connectClients(firstClients);
    const steady = await sample();
    await connectClients(clients);
    if (connections < clients) throw new Error(`S8: ${clients} clients made only ${connections} connections`);
    const after = await sample();

    const records = await completionRecordMemory(r, settings);

    const n = (x: number) => x.toLocaleString("en");
    const bytesPerKey = (loaded.rss - empty.rss) / keys;
    return {
      id: "S8",
      title: `kv server memory (memory store): ${n(keys)} keys of 100-byte values, then ${n(clients)} clients × one put on a new connection`,
      measures: "RSS after a full GC unless said",
      systems: [],
      figures: [
        { label: "RSS, warm and empty", value: empty.rss / MiB, unit: "MiB" },
        { label: `RSS with ${n(keys)} keys, before GC`, value: loaded.asIs / MiB, unit: "MiB" },
        { label: `RSS with ${n(keys)} keys`, value: loaded.rss / MiB, unit: "MiB" },
        { label: "RSS per key", value: bytesPerKey, unit: "bytes" },
        { label: "heap used per key", value: (loaded.heap - empty.heap) / keys, unit: "bytes" },
        { label: `RSS after ${n(firstClients)} clients`, value: steady.rss / MiB, unit: "MiB" },
        { label: `RSS after ${n(clients)} clients, before GC`, value: after.asIs / MiB, unit: "MiB" },
        { label: `RSS after ${n(clients)} clients`, value: after.rss / MiB, unit: "MiB" },
        {
          label: `RSS growth per client over the last ${n(clients - firstClients)}`,
          value: (after.rss - steady.rss) / (clients - firstClients),
          unit: "bytes",
        },
        { label: `heap growth over all ${n(clients)} clients`, value: (after.heap - loaded.heap) / MiB, unit: "MiB" },
        { label: `puts with ids, at full speed (records kept ${settings.recordRetentionMs / 1000} s)`, value: records.puts, unit: "puts" },
        { label: "their rate", value: records.putsPerSecond, unit: "puts/s" },
        { label: "completion records kept at the end", value: records.kept, unit: "records" },
        { label: "RSS with them", value: records.rssWith / MiB, unit: "MiB" },
        { label: "RSS per completion record", value: (records.rssWith - records.rssBefore) / records.kept, unit: "bytes" },
        { label: "completion records once the retention passed", value: records.keptAfter, unit: "records" },
        { label: "RSS once the retention passed", value: records.rssAfter / MiB, unit: "MiB" },
      ],
      ratios: [
        { label: "RSS bytes per key beyond the 100 value bytes", value: bytesPerKey - VALUE.length, goal: { max: 250 } },
        {
          label: `RSS growth over the last ${n(clients - firstClients)} clients, % (flat)`,
          value: ((after.rss - steady.rss) / steady.rss) * 100,
          goal: { max: FLAT_PERCENT },
        },
        // Bounded by the retention window: no more records than puts answered in the last window.
        {
          label: "records kept ÷ puts answered in the last retention window",
          value: records.kept / records.inLastWindow,
          goal: { max: 1 },
        },
      ],
    };
  });
}

const RECORD_KEYS = 10_000;

/**
 * A memory-store server keeping completion records for `recordRetentionMs`: RSS after a GC before
 * and after `recordPuts` puts with ids at full speed (on keys updated in place: the data does not
 * grow), with the records kept then, and again once the retention passed.
 */
async function completionRecordMemory(r: Resources, settings: Settings) {
  const { workers, settleMs, recordPuts, recordRetentionMs } = settings;
  const kv = r.add(await startKv("memory", { inspect: true, env: { KV_ID_RETENTION_MS: String(recordRetentionMs) } }), (s) => s.stop());
  const pid = kv.pids[0] as number;
  const inspector = r.add(await openInspector(kv.inspectorUrl as string), (i) => i.close());
  const client = r.add(createHttpClient(kv.url, workers), (c) => c.close());
  const records = () => gauge(kv.url, "kv_completion_records"); // the memory store drops expired ones as it counts
  const rssAfterGc = async () => {
    await inspector.collectGarbage();
    await sleep(settleMs);
    return rssBytesOf(pid);
  };
  const space = new KeySpace("r", RECORD_KEYS, workers);
  const perWorker = (n: number) => Math.ceil(n / workers);
  await runLoad({ workers, op: conditionalPuts(client, space), serverPids: [], count: perWorker(RECORD_KEYS) });
  await sleep(recordRetentionMs + settleMs);
  if ((await records()) !== 0) throw new Error("S8: the warm-up's completion records did not expire");
  const rssBefore = await rssAfterGc();
  const started = performance.now();
  const put = conditionalPuts(client, space);
  const answeredAt: number[] = [];
  const op = async (worker: number) => {
    await put(worker);
    answeredAt.push(performance.now());
    return undefined;
  };
  await runLoad({ workers, op, serverPids: [], count: perWorker(recordPuts) });
  const putsPerSecond = recordPuts / ((performance.now() - started) / 1000);
  // A record still kept when counted was made within the retention before the count, which
  // began after this: so its put was answered within the retention before this, too.
  const countAskedAt = performance.now();
  const kept = await records();
  const inLastWindow = answeredAt.filter((t) => t >= countAskedAt - recordRetentionMs).length;
  const rssWith = await rssAfterGc();
  await sleep(recordRetentionMs);
  const keptAfter = await records();
  const rssAfter = await rssAfterGc();
  return { puts: recordPuts, putsPerSecond, kept, inLastWindow, rssBefore, rssWith, keptAfter, rssAfter };
}
