// The one load generator: N workers in this process, each one operation at a time, for a time
// or a count; every latency into one histogram; the CPU this process and the servers used.
import { createHistogram, type RecordableHistogram } from "node:perf_hooks";
import { cpuSecondsOf, machineBusySeconds } from "./systems";

/**
 * One operation of worker `worker`. Resolves when it is done, with the latency to record in ms
 * when that is not the whole call (a lock records its wait); rejects on any reply that is not
 * the expected success, which stops the run.
 */
export type Operation = (worker: number) => Promise<number | undefined>;

/** What one system did in one stretch of load. */
export interface Stretch {
  readonly ops: number;
  readonly seconds: number;
  readonly latencies: RecordableHistogram;
  /** CPU seconds used by this process (the load generator) and by the system's processes. */
  readonly clientCpuSeconds: number;
  readonly serverCpuSeconds: number;
  /** CPU seconds the rest of the machine used meanwhile: idle systems, other work, hypervisor steal. */
  readonly otherCpuSeconds: number;
}

/** Runs `workers` loops of `op` until `durationMs` has passed (or each did `count` ops). */
export async function runLoad(options: {
  workers: number;
  op: Operation;
  serverPids: readonly number[];
  durationMs?: number;
  count?: number;
}): Promise<Stretch> {
  const { workers, op, serverPids, durationMs, count } = options;
  const latencies = createHistogram();
  const serverCpu0 = serverPids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0);
  const clientCpu0 = process.cpuUsage();
  const machine0 = machineBusySeconds();
  const start = performance.now();
  const end = durationMs === undefined ? Number.POSITIVE_INFINITY : start + durationMs;
  const perWorker = count ?? Number.POSITIVE_INFINITY;
  let ops = 0;
  let failed = false;
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      for (let n = 0; n < perWorker && !failed && performance.now() < end; n++) {
        const t0 = performance.now();
        let recorded: number | undefined;
        try {
          recorded = await op(worker);
        } catch (err) {
          failed = true; // the other workers stop after their operation in flight
          throw err;
        }
        latencies.record(Math.max(1, Math.round((recorded ?? performance.now() - t0) * 1e6)));
        ops++;
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  const clientCpu = process.cpuUsage(clientCpu0);
  const clientCpuSeconds = (clientCpu.user + clientCpu.system) / 1e6;
  const serverCpuSeconds = serverPids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0) - serverCpu0;
  const otherCpuSeconds = Math.max(0, machineBusySeconds() - machine0 - clientCpuSeconds - serverCpuSeconds);
  return { ops, seconds, latencies, clientCpuSeconds, serverCpuSeconds, otherCpuSeconds };
}

/** One system's figures over the measured rounds of a scenario. */
export interface SystemFigures {
  readonly name: string;
  /** Median over rounds. */
  readonly opsPerSec: number;
  readonly opsPerSecByRound: readonly number[];
  /** Over every measured operation of every round. */
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** CPU used per second of load, summed over rounds: 1.0 is one core busy. */
  readonly serverCores: number;
  readonly clientCores: number;
  /** The rest of the machine: more than a few hundredths of a core means something else ran. */
  readonly otherCores: number;
  /** Server CPU per operation, in µs: what the system costs, whoever limited the throughput. */
  readonly serverCpuUsPerOp: number;
  /** The load generator's CPU per operation, in µs: what the client costs. */
  readonly clientCpuUsPerOp: number;
}

/** A system of a scenario: its operation, and the processes that serve it. */
export interface Contender {
  readonly name: string;
  readonly op: Operation;
  readonly serverPids: readonly number[];
}

/**
 * Warm-up (each contender once, discarded), then `rounds` rounds that interleave the
 * contenders (A B C A B C …), so a drift of the machine touches every system alike.
 */
export async function compare(
  contenders: readonly Contender[],
  plan: { workers: number; rounds: number; warmupMs?: number; roundMs?: number; warmupCount?: number; roundCount?: number },
): Promise<SystemFigures[]> {
  const load = (c: Contender, durationMs: number | undefined, count: number | undefined) =>
    runLoad({
      workers: plan.workers,
      op: c.op,
      serverPids: c.serverPids,
      ...(durationMs !== undefined && { durationMs }),
      ...(count !== undefined && { count }),
    });
  for (const c of contenders) await load(c, plan.warmupMs, plan.warmupCount);
  const stretches = contenders.map((): Stretch[] => []);
  for (let round = 0; round < plan.rounds; round++) {
    for (const [i, c] of contenders.entries()) stretches[i]?.push(await load(c, plan.roundMs, plan.roundCount));
  }
  return contenders.map((c, i) => summarize(c.name, stretches[i] ?? []));
}

function summarize(name: string, stretches: readonly Stretch[]): SystemFigures {
  const all = createHistogram();
  for (const s of stretches) all.add(s.latencies);
  const seconds = stretches.reduce((sum, s) => sum + s.seconds, 0);
  const byRound = stretches.map((s) => s.ops / s.seconds);
  const ops = stretches.reduce((sum, s) => sum + s.ops, 0);
  const serverCpuSeconds = stretches.reduce((sum, s) => sum + s.serverCpuSeconds, 0);
  const clientCpuSeconds = stretches.reduce((sum, s) => sum + s.clientCpuSeconds, 0);
  return {
    name,
    opsPerSec: median(byRound),
    opsPerSecByRound: byRound,
    p50Ms: all.percentile(50) / 1e6,
    p99Ms: all.percentile(99) / 1e6,
    serverCores: serverCpuSeconds / seconds,
    clientCores: clientCpuSeconds / seconds,
    otherCores: stretches.reduce((sum, s) => sum + s.otherCpuSeconds, 0) / seconds,
    serverCpuUsPerOp: (serverCpuSeconds / ops) * 1e6,
    clientCpuUsPerOp: (clientCpuSeconds / ops) * 1e6,
  };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  if (sorted.length === 0) return Number.NaN;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
