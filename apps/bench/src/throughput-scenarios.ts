// S1–S4, S6, S7: conditional puts and reads, 64 workers (S3: one), every system of a scenario
// started fresh for it, measured in interleaved rounds.
import { createClerk } from "@kv/clerk";
import { Etcd3 } from "etcd3";
import Redis from "ioredis";
import { createClerkClient, createEtcdClient, createHttpClient, createRedisClient, type VersionedClient } from "./clients";
import { compare, type Contender, type SystemFigures } from "./load";
import { withResources, type Resources } from "./resources";
import { figuresOf, type Ratio, type ScenarioResult, throughputRatio } from "./results";
import type { Settings } from "./settings";
import { type Server, startBareFastify, startEtcd, startKv, startRedis } from "./systems";
import { conditionalPuts, KeySpace, populate, reads } from "./workloads";

type Start = () => Promise<Server>;

/** A server of `start`, stopped with the scenario. */
function serve(resources: Resources, start: Start): Promise<Server> {
  return start().then((server) => resources.add(server, (s) => s.stop()));
}

function http(resources: Resources, server: Server, settings: Settings, workers = settings.workers, ids = true): VersionedClient {
  return resources.add(createHttpClient(server.url, workers, { ids }), (c) => c.close());
}

function etcd(resources: Resources, server: Server, prefix: string): VersionedClient {
  const client = resources.add(new Etcd3({ hosts: server.url }), (c) => c.close());
  return createEtcdClient(client, prefix);
}

function redis(resources: Resources, server: Server): VersionedClient {
  const connection = resources.add(new Redis(server.url, { lazyConnect: false }), async (r) => void (await r.quit()));
  return createRedisClient(connection);
}

/** A contender doing conditional puts on a key space of its own. */
function putter(name: string, client: VersionedClient, pids: readonly number[], settings: Settings, workers = settings.workers): Contender {
  return { name, op: conditionalPuts(client, new KeySpace(`${slug(name)}/`, settings.keys, workers)), serverPids: pids };
}

/** `kv (memory)` → `kv (memory, baseline)`: the same system on the `--baseline` build. */
const baselineName = (name: string) => name.replace(/\)$/, ", baseline)");

/** With `--baseline`: kv on `store` from the baseline build, stopped with the scenario. */
async function serveBaseline(resources: Resources, settings: Settings, store: "memory" | "lmdb"): Promise<Server | undefined> {
  const entry = settings.baseline?.serverEntry;
  return entry === undefined ? undefined : serve(resources, () => startKv(store, { entry }));
}

/** This build ÷ the baseline build, by throughput and by server CPU per op (none without `--baseline`). */
function baselineRatios(systems: readonly SystemFigures[], name: string, baseline: Server | undefined): Ratio[] {
  if (baseline === undefined) return [];
  const [now, before] = [figuresOf(systems, name), figuresOf(systems, baselineName(name))];
  return [
    { label: `${name} ÷ baseline`, value: now.opsPerSec / before.opsPerSec },
    { label: `${name} ÷ baseline, by server CPU per op`, value: before.serverCpuUsPerOp / now.serverCpuUsPerOp },
    { label: `${name} p99 ÷ baseline p99`, value: now.p99Ms / before.p99Ms },
  ];
}

/** `kv (memory)` → `kv-memory`: a key prefix per contender. */
const slug = (name: string) => name.replace(/[^A-Za-z0-9]+/g, "-").replace(/-$/, "");

async function measure(settings: Settings, contenders: readonly Contender[], workers = settings.workers) {
  return compare(contenders, { workers, rounds: settings.rounds, warmupMs: settings.warmupMs, roundMs: settings.roundMs });
}

export async function s1(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const [kv, bare, etcdServer, redisServer] = [
      await serve(r, () => startKv("memory")),
      await serve(r, startBareFastify),
      await serve(r, startEtcd),
      await serve(r, startRedis),
    ];
    const baseline = await serveBaseline(r, settings, "memory");
    const systems = await measure(settings, [
      putter("kv (memory)", http(r, kv, settings), kv.pids, settings),
      ...(baseline === undefined ? [] : [putter(baselineName("kv (memory)"), http(r, baseline, settings), baseline.pids, settings)]),
      putter("bare Fastify", http(r, bare, settings), bare.pids, settings),
      putter("etcd", etcd(r, etcdServer, "s1/"), etcdServer.pids, settings),
      putter("Redis (Lua CAS)", redis(r, redisServer), redisServer.pids, settings),
    ]);
    return {
      id: "S1",
      title: `conditional put, memory store, ${settings.workers} workers, ${settings.keys} keys`,
      systems,
      figures: [],
      ratios: [
        { label: "kv ÷ etcd", value: throughputRatio(systems, "kv (memory)", "etcd"), goal: { min: 2 } },
        { label: "kv ÷ bare Fastify", value: throughputRatio(systems, "kv (memory)", "bare Fastify"), goal: { min: 0.9 } },
        { label: "kv ÷ Redis", value: throughputRatio(systems, "kv (memory)", "Redis (Lua CAS)") },
        // Who runs out of CPU first on 2 cores decides ops/s; CPU per op is what each server costs.
        {
          label: "kv ÷ bare Fastify, by server CPU per op",
          value: figuresOf(systems, "bare Fastify").serverCpuUsPerOp / figuresOf(systems, "kv (memory)").serverCpuUsPerOp,
        },
        ...baselineRatios(systems, "kv (memory)", baseline),
      ],
    };
  });
}

export async function s2(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const [lmdb, etcdServer, memory] = [
      await serve(r, () => startKv("lmdb")),
      await serve(r, startEtcd),
      await serve(r, () => startKv("memory")),
    ];
    const baseline = await serveBaseline(r, settings, "lmdb");
    const systems = await measure(settings, [
      putter("kv (LMDB)", http(r, lmdb, settings), lmdb.pids, settings),
      ...(baseline === undefined ? [] : [putter(baselineName("kv (LMDB)"), http(r, baseline, settings), baseline.pids, settings)]),
      putter("etcd", etcd(r, etcdServer, "s2/"), etcdServer.pids, settings),
      putter("kv (memory)", http(r, memory, settings), memory.pids, settings),
    ]);
    return {
      id: "S2",
      title: `durable conditional put, ${settings.workers} workers, ${settings.keys} keys`,
      systems,
      figures: [],
      ratios: [
        { label: "kv-LMDB ÷ etcd", value: throughputRatio(systems, "kv (LMDB)", "etcd"), goal: { min: 1.5 } },
        { label: "kv-LMDB ÷ kv-memory", value: throughputRatio(systems, "kv (LMDB)", "kv (memory)"), goal: { min: 0.7 } },
        ...baselineRatios(systems, "kv (LMDB)", baseline),
      ],
    };
  });
}

export async function s3(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const [lmdb, etcdServer] = [await serve(r, () => startKv("lmdb")), await serve(r, startEtcd)];
    const baseline = await serveBaseline(r, settings, "lmdb");
    const systems = await measure(
      settings,
      [
        putter("kv (LMDB)", http(r, lmdb, settings, 1), lmdb.pids, settings, 1),
        ...(baseline === undefined ? [] : [putter(baselineName("kv (LMDB)"), http(r, baseline, settings, 1), baseline.pids, settings, 1)]),
        putter("etcd", etcd(r, etcdServer, "s3/"), etcdServer.pids, settings, 1),
      ],
      1,
    );
    return {
      id: "S3",
      title: `durable conditional put, 1 worker: latency, ${settings.keys} keys`,
      systems,
      figures: [],
      ratios: [
        {
          label: "kv-LMDB p50 ÷ etcd p50",
          value: figuresOf(systems, "kv (LMDB)").p50Ms / figuresOf(systems, "etcd").p50Ms,
          goal: { max: 1 },
        },
        { label: "kv-LMDB p99 ÷ etcd p99", value: figuresOf(systems, "kv (LMDB)").p99Ms / figuresOf(systems, "etcd").p99Ms },
        ...baselineRatios(systems, "kv (LMDB)", baseline),
      ],
    };
  });
}

export async function s4(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const [memory, lmdb, etcdServer] = [
      await serve(r, () => startKv("memory")),
      await serve(r, () => startKv("lmdb")),
      await serve(r, startEtcd),
    ];
    const baseline = await serveBaseline(r, settings, "memory");
    const reader = async (name: string, client: VersionedClient, pids: readonly number[]): Promise<Contender> => {
      const space = new KeySpace(`${slug(name)}/`, settings.keys, settings.workers);
      await populate(client, space, settings.workers);
      return { name, op: reads(client, space), serverPids: pids };
    };
    const systems = await measure(settings, [
      await reader("kv (memory)", http(r, memory, settings), memory.pids),
      ...(baseline === undefined ? [] : [await reader(baselineName("kv (memory)"), http(r, baseline, settings), baseline.pids)]),
      await reader("kv (LMDB)", http(r, lmdb, settings), lmdb.pids),
      await reader("etcd", etcd(r, etcdServer, "s4/"), etcdServer.pids),
    ]);
    return {
      id: "S4",
      title: `linearizable reads, ${settings.workers} workers, ${settings.keys} keys`,
      measures: "reads/s",
      systems,
      figures: [],
      ratios: [
        { label: "kv ÷ etcd", value: throughputRatio(systems, "kv (memory)", "etcd"), goal: { min: 2 } },
        { label: "kv-LMDB ÷ etcd", value: throughputRatio(systems, "kv (LMDB)", "etcd") },
        ...baselineRatios(systems, "kv (memory)", baseline),
      ],
    };
  });
}

export async function s6(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const etcdServer = await serve(r, startEtcd);
    const kv = await serve(r, () => startKv({ etcd: [etcdServer.url] }));
    const systems = await measure(settings, [
      putter("kv (etcd store)", http(r, kv, settings), [...kv.pids, ...etcdServer.pids], settings),
      putter("etcd", etcd(r, etcdServer, "s6/"), etcdServer.pids, settings),
    ]);
    return {
      id: "S6",
      title: `conditional put, kv on the etcd store vs etcd direct, ${settings.workers} workers, ${settings.keys} keys`,
      systems,
      figures: [],
      ratios: [{ label: "kv-on-etcd ÷ etcd", value: throughputRatio(systems, "kv (etcd store)", "etcd"), goal: { min: 0.5 } }],
    };
  });
}

export async function s7(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const kv = await serve(r, () => startKv("memory"));
    const clerk = createClerkClient(r.add(createClerk({ endpoints: [kv.url] }), (c) => c.close()));
    // With --baseline: the baseline build's clerk, to the same server.
    const baselineClerk =
      settings.baseline === undefined
        ? undefined
        : createClerkClient(
            r.add(((await import(settings.baseline.clerkEntry)) as typeof import("@kv/clerk")).createClerk({ endpoints: [kv.url] }), (c) =>
              c.close(),
            ),
          );
    const systems = await measure(settings, [
      putter("raw undici", http(r, kv, settings), kv.pids, settings),
      putter("@kv/clerk", clerk, kv.pids, settings),
      ...(baselineClerk === undefined ? [] : [putter(BASELINE_CLERK, baselineClerk, kv.pids, settings)]),
    ]);
    return {
      id: "S7",
      title: `clerk overhead: conditional put to one kv server (memory), ${settings.workers} workers`,
      systems,
      figures: [],
      ratios: [
        { label: "clerk ÷ raw undici", value: throughputRatio(systems, "@kv/clerk", "raw undici"), goal: { min: 0.9 } },
        {
          label: "clerk ÷ raw undici, by bench CPU per op",
          value: figuresOf(systems, "raw undici").clientCpuUsPerOp / figuresOf(systems, "@kv/clerk").clientCpuUsPerOp,
        },
        ...(baselineClerk === undefined
          ? []
          : [
              { label: "clerk ÷ baseline clerk", value: throughputRatio(systems, "@kv/clerk", BASELINE_CLERK) },
              {
                label: "clerk ÷ baseline clerk, by bench CPU per op",
                value: figuresOf(systems, BASELINE_CLERK).clientCpuUsPerOp / figuresOf(systems, "@kv/clerk").clientCpuUsPerOp,
              },
            ]),
      ],
    };
  });
}

const BASELINE_CLERK = "@kv/clerk (baseline)";

/** S10: what completion records cost: durable conditional puts with put ids and without, on LMDB and on etcd. */
export async function s10(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  return withResources(async (r) => {
    const lmdb = await serve(r, () => startKv("lmdb"));
    const etcdServer = await serve(r, startEtcd);
    const onEtcd = await serve(r, () => startKv({ etcd: [etcdServer.url] }));
    const etcdPids = [...onEtcd.pids, ...etcdServer.pids];
    const systems = await measure(settings, [
      putter("kv (LMDB, put ids)", http(r, lmdb, settings), lmdb.pids, settings),
      putter("kv (LMDB, no ids)", http(r, lmdb, settings, settings.workers, false), lmdb.pids, settings),
      putter("kv (etcd store, put ids)", http(r, onEtcd, settings), etcdPids, settings),
      putter("kv (etcd store, no ids)", http(r, onEtcd, settings, settings.workers, false), etcdPids, settings),
    ]);
    return {
      id: "S10",
      title: `completion records' cost: durable conditional puts with and without put ids, ${settings.workers} workers, ${settings.keys} keys`,
      systems,
      figures: [],
      ratios: [
        {
          label: "LMDB: with ids ÷ without",
          value: throughputRatio(systems, "kv (LMDB, put ids)", "kv (LMDB, no ids)"),
          goal: { min: 0.9 },
        },
        {
          label: "etcd store: with ids ÷ without",
          value: throughputRatio(systems, "kv (etcd store, put ids)", "kv (etcd store, no ids)"),
          goal: { min: 0.9 },
        },
      ],
    };
  });
}
