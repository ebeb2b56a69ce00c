import type { DeleteIfVersionResult, PutIfVersionResult, Store, StoredEntry } from "@kv/server";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

type CounterSeries = ReturnType<Counter["labels"]>;
type HistogramSeries = ReturnType<Histogram["labels"]>;

/** Latency buckets in seconds: from a memory-store put (~0.1 ms) to an etcd election (~2 s). */
const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * The server's Prometheus metrics, in a registry of its own (not prom-client's global one), so
 * that several apps in one process — tests — count apart.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "kv_http_requests_total",
    help: "HTTP requests answered, by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: "kv_http_request_duration_seconds",
    help: "Time from a request's arrival to its reply, by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: "kv_http_requests_in_flight",
    help: "Requests being handled now",
    registers: [this.registry],
  });
  readonly storeDuration = new Histogram({
    name: "kv_store_operation_duration_seconds",
    help: "Time a store call took, by store kind, operation and outcome",
    labelNames: ["store", "operation", "outcome"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly putConflicts = new Counter({
    name: "kv_put_conflicts_total",
    help: "Puts answered ErrVersion: the key was at another version",
    registers: [this.registry],
  });
  readonly waiters = new Gauge({
    name: "kv_waiters",
    help: "Long-poll reads waiting now",
    registers: [this.registry],
  });
  readonly overloadRejections = new Counter({
    name: "kv_overload_rejections_total",
    help: "Requests refused 503 before reaching the store, by reason (in_flight, event_loop_delay, waiters)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });

  // prom-client hashes a label set on every call; a request's few label sets are looked up once.
  readonly #answered = new Map<string, { count: CounterSeries; duration: HistogramSeries }>();
  readonly #storeCalls = new Map<string, HistogramSeries>();

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** Counts one answered request and how long it took. */
  answered(route: string, method: string, status: number, seconds: number): void {
    const key = `${route} ${method} ${status}`;
    let series = this.#answered.get(key);
    if (series === undefined) {
      const labels = { route, method, status: String(status) };
      series = { count: this.requests.labels(labels), duration: this.requestDuration.labels(labels) };
      this.#answered.set(key, series);
    }
    series.count.inc();
    series.duration.observe(seconds);
  }

  /** Times one store call. */
  storeCall(store: string, operation: string, outcome: string, seconds: number): void {
    const key = `${operation} ${outcome}`;
    let series = this.#storeCalls.get(key);
    if (series === undefined) {
      series = this.storeDuration.labels({ store, operation, outcome });
      this.#storeCalls.set(key, series);
    }
    series.observe(seconds);
  }
}

/**
 * `store`, with each call timed into `kv_store_operation_duration_seconds` under `kind`. Outcomes:
 * `found`/`absent` for get, `applied`/`refused`/`recorded` (answered from a completion record) for
 * putIfVersion and deleteIfVersion, and `error`. Adds `kv_completion_records` for a store that keeps them.
 */
export function measureStore(store: Store, kind: string, metrics: Metrics): Store {
  const time = async <T>(operation: string, call: () => Promise<T>, outcomeOf: (result: T) => string): Promise<T> => {
    const started = performance.now();
    try {
      const result = await call();
      metrics.storeCall(kind, operation, outcomeOf(result), (performance.now() - started) / 1000);
      return result;
    } catch (err) {
      metrics.storeCall(kind, operation, "error", (performance.now() - started) / 1000);
      throw err;
    }
  };
  const measured: Store = {
    get: (key) =>
      time(
        "get",
        () => store.get(key),
        (entry: StoredEntry | undefined) => (entry === undefined ? "absent" : "found"),
      ),
    putIfVersion: (key, value, expectedVersion, putId, options) =>
      time(
        "putIfVersion",
        () => store.putIfVersion(key, value, expectedVersion, putId, options),
        (r: PutIfVersionResult) => (r.ok === undefined ? "recorded" : r.ok ? "applied" : "refused"),
      ),
    deleteIfVersion: (key, expectedVersion, id, options) =>
      time(
        "deleteIfVersion",
        () => store.deleteIfVersion(key, expectedVersion, id, options),
        (r: DeleteIfVersionResult) => (r.ok === undefined ? "recorded" : r.ok ? "applied" : "refused"),
      ),
    close: () => store.close(),
  };
  const { isReady, watch, completionRecords } = store;
  if (completionRecords !== undefined) {
    measured.completionRecords = () => completionRecords.call(store);
    new Gauge({
      name: "kv_completion_records",
      help: "Completion records the store keeps now (KV_ID_RETENTION_MS, KV_MAX_IDS)",
      registers: [metrics.registry],
      async collect() {
        // A store that cannot count now (etcd unreachable) leaves the last count: the rest of /metrics matters most then.
        const count = await completionRecords.call(store).catch(() => undefined);
        if (count !== undefined) this.set(count);
      },
    });
  }
  if (isReady !== undefined) measured.isReady = () => isReady.call(store);
  if (watch !== undefined) measured.watch = (key, onChange) => watch.call(store, key, onChange);
  return measured;
}

/**
 * Counts every request in flight, and each answered one by route, method and status with its
 * duration — long-polls under a route of their own (`…?wait`): their minute-long waits are not
 * latency. "close" comes once per reply, answered or abandoned (a client that left while the
 * store worked sees neither onResponse nor onRequestAbort).
 */
export const requestMetricsPlugin = fp(
  async (app: FastifyInstance, { metrics }: { metrics: Metrics }) => {
    app.addHook("onRequest", (request, reply, done) => {
      metrics.inFlight.inc();
      reply.raw.on("close", () => {
        metrics.inFlight.dec();
        if (!reply.raw.writableFinished) return; // abandoned: no answer to count
        const route = `${request.routeOptions.url ?? "unmatched"}${request.isLongPoll ? "?wait" : ""}`;
        metrics.answered(route, request.method, reply.raw.statusCode, reply.elapsedTime / 1000);
      });
      done();
    });
  },
  { name: "kv-request-metrics" },
);
