import { monitorEventLoopDelay } from "node:perf_hooks";
import type { FastifyReply, FastifyRequest, onRequestHookHandler } from "fastify";
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
 * Registered in the `/v1` scope ({@link loadShedding}), as auth is; `/readyz` asks {@link isLagging}.
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

  /** Whether the event loop lags past `maxEventLoopDelayMs` now. */
  isLagging(): boolean {
    return this.#lagMs > this.#config.maxEventLoopDelayMs;
  }

  /**
   * Whether a `/v1` request may go on: refuses it (503) and answers false while the event loop
   * lags, or — any but a long-poll read, which waits without working (Waiters caps those) —
   * when `/v1` is full. One let in and counted is counted out when its reply closes.
   */
  enter(request: FastifyRequest, reply: FastifyReply): boolean {
    if (this.isLagging()) {
      this.refuseLagging(reply);
      return false;
    }
    if (request.isLongPoll) return true;
    if (this.#inFlight >= this.#config.maxInFlight) {
      this.#shed(reply, "in_flight", `overloaded: ${this.#inFlight} requests in flight`);
      return false;
    }
    this.#inFlight++;
    reply.raw.on("close", () => this.#inFlight--);
    return true;
  }

  /** Refuses `reply` 503: the event loop lags. */
  refuseLagging(reply: FastifyReply): void {
    this.#shed(reply, "event_loop_delay", `overloaded: the event loop lags ${Math.round(this.#lagMs)} ms`);
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

/** The `/v1` scope's first hook: sheds load before the token is checked or the store touched. */
export function loadShedding(shedder: LoadShedder): onRequestHookHandler {
  return (request, reply, done) => {
    shedder.enter(request, reply);
    done();
  };
}
