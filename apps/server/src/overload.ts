import { monitorEventLoopDelay } from "node:perf_hooks";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Config } from "./config";
import type { Metrics } from "./metrics";
import { refuse } from "./replies";

// Seconds a refused client should wait: about as long as the event-loop delay takes to be measured again.
const RETRY_AFTER_SECONDS = 1;
// How often the event-loop delay is taken, and the monitor's own timer (its delay is not lag).
const SAMPLE_INTERVAL_MS = 250;
const MONITOR_RESOLUTION_MS = 10;

/** Refuses a request as overloaded, before it reaches the store: a clerk may retry it without ambiguity. */
function shed(reply: FastifyReply, reason: "in_flight" | "event_loop_delay", message: string, metrics: Metrics): void {
  metrics.overloadRejections.inc({ reason });
  refuse(reply.header("retry-after", String(RETRY_AFTER_SECONDS)), "ErrUnavailable", message);
}

/**
 * Load shedding for the whole app: while the event loop lags past `maxEventLoopDelayMs` — the
 * mean delay over the last 250 ms, measured by Node's own monitor — `/v1` requests and
 * `/readyz` are refused 503 with `Retry-After`; `/healthz` and `/metrics` stay open, to watch it
 * recover. The hook only compares two numbers: the measuring happens off the request path.
 */
export function eventLoopGuard(app: FastifyInstance, { config, metrics }: { config: Config; metrics: Metrics }): void {
  if (config.maxEventLoopDelayMs === 0) return;
  const histogram = monitorEventLoopDelay({ resolution: MONITOR_RESOLUTION_MS });
  histogram.enable();
  let lagMs = 0;
  const sampler = setInterval(() => {
    lagMs = Math.max(0, histogram.mean / 1e6 - MONITOR_RESOLUTION_MS);
    histogram.reset();
  }, SAMPLE_INTERVAL_MS).unref();
  app.addHook("onClose", (_app, done) => {
    clearInterval(sampler);
    histogram.disable();
    done();
  });
  app.addHook("onRequest", (request, reply, done) => {
    if (lagMs > config.maxEventLoopDelayMs && (request.url.startsWith("/v1/") || request.url === "/readyz")) {
      shed(reply, "event_loop_delay", `overloaded: the event loop lags ${Math.round(lagMs)} ms`, metrics);
    }
    done();
  });
}

/**
 * A cap on `/v1` requests being handled at once: past `maxInFlight`, a request is refused 503
 * with `Retry-After` before it is read further. Register inside the `/v1` plugin.
 */
export function inFlightLimit(app: FastifyInstance, { config, metrics }: { config: Config; metrics: Metrics }): void {
  let inFlight = 0;
  app.addHook("onRequest", (_request, reply, next) => {
    if (inFlight >= config.maxInFlight) shed(reply, "in_flight", `overloaded: ${inFlight} requests in flight`, metrics);
    else {
      inFlight++;
      // "close" comes once, answered or not: also when the client left while the store worked,
      // which neither onResponse nor onRequestAbort sees.
      reply.raw.once("close", () => inFlight--);
    }
    next();
  });
}
