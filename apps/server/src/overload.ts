import { monitorEventLoopDelay } from "node:perf_hooks";
import type { FastifyReply } from "fastify";
import type { Config } from "./config";
import type { Metrics } from "./metrics";
import { refuse } from "./replies";

// Seconds a refused client should wait: about as long as the event-loop delay takes to be measured again.
const RETRY_AFTER_SECONDS = 1;
// How often the event-loop delay is taken, and the monitor's own timer (its delay is not lag).
const SAMPLE_INTERVAL_MS = 250;
const MONITOR_RESOLUTION_MS = 10;

/**
 * Load shedding: requests refused 503 with `Retry-After`, before they reach the store, so a
 * clerk may retry them without ambiguity — while the event loop lags past
 * `maxEventLoopDelayMs` (the mean delay over the last 250 ms, from Node's own monitor: the
 * measuring happens off the request path), and past `maxInFlight` `/v1` requests at once.
 */
export class LoadShedder {
  readonly #config: Config;
  readonly #metrics: Metrics;
  readonly #monitor: ReturnType<typeof monitorEventLoopDelay> | undefined;
  readonly #sampler: NodeJS.Timeout | undefined;
  #lagMs = 0;
  #inFlight = 0;

  constructor(config: Config, metrics: Metrics) {
    this.#config = config;
    this.#metrics = metrics;
    if (config.maxEventLoopDelayMs === 0) return;
    const monitor = monitorEventLoopDelay({ resolution: MONITOR_RESOLUTION_MS });
    monitor.enable();
    this.#monitor = monitor;
    this.#sampler = setInterval(() => {
      this.#lagMs = Math.max(0, monitor.mean / 1e6 - MONITOR_RESOLUTION_MS);
      monitor.reset();
    }, SAMPLE_INTERVAL_MS).unref();
  }

  /**
   * Whether a request may go on: refuses it (503) and answers false when the event loop lags
   * (for `/v1` and `/readyz`) or when `/v1` is full. A `/v1` request let in — any but a
   * long-poll read — must be let out with {@link leave}; {@link counts} tells which.
   */
  enter(method: string, url: string, reply: FastifyReply): boolean {
    const isV1 = url.startsWith("/v1/");
    if (this.#lagMs > this.#config.maxEventLoopDelayMs && (isV1 || url === "/readyz")) {
      this.#shed(reply, "event_loop_delay", `overloaded: the event loop lags ${Math.round(this.#lagMs)} ms`);
      return false;
    }
    // A long-poll read waits without working: Waiters caps those.
    if (!this.counts(method, url)) return true;
    if (this.#inFlight >= this.#config.maxInFlight) {
      this.#shed(reply, "in_flight", `overloaded: ${this.#inFlight} requests in flight`);
      return false;
    }
    this.#inFlight++;
    return true;
  }

  /** Whether `enter` counted a request to `url` in (and `leave` must count it out). */
  counts(method: string, url: string): boolean {
    if (!url.startsWith("/v1/")) return false;
    const query = url.indexOf("?");
    return !(method === "GET" && query !== -1 && new URLSearchParams(url.slice(query + 1)).has("waitMs"));
  }

  /** A `/v1` request let in by {@link enter} is done: answered, or abandoned. */
  leave(): void {
    this.#inFlight--;
  }

  /** Stops measuring. */
  close(): void {
    clearInterval(this.#sampler);
    this.#monitor?.disable();
  }

  #shed(reply: FastifyReply, reason: "in_flight" | "event_loop_delay", message: string): void {
    this.#metrics.overloadRejections.inc({ reason });
    refuse(reply.header("retry-after", String(RETRY_AFTER_SECONDS)), "ErrUnavailable", message);
  }
}
