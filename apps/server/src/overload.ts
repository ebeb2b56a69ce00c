import underPressure from "@fastify/under-pressure";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Config } from "./config";
import type { Metrics } from "./metrics";
import { refuse } from "./replies";

// Seconds a refused client should wait: about as long as the event-loop delay takes to be measured again.
const RETRY_AFTER_SECONDS = 1;
// How often the event-loop delay is measured (under-pressure's default is one second).
const SAMPLE_INTERVAL_MS = 250;

/** Refuses a request as overloaded, before it reaches the store: a clerk may retry it without ambiguity. */
function shed(reply: FastifyReply, reason: "in_flight" | "event_loop_delay", message: string, metrics: Metrics): void {
  metrics.overloadRejections.inc({ reason });
  refuse(reply.header("retry-after", String(RETRY_AFTER_SECONDS)), "ErrUnavailable", message);
}

/**
 * Load shedding for the whole app: while the event loop lags past `maxEventLoopDelayMs`
 * (measured by @fastify/under-pressure), `/v1` requests and `/readyz` are refused 503 with
 * `Retry-After` — `/healthz` and `/metrics` stay open, to watch it recover. Call it on the root
 * instance, not through `register`: under-pressure's hook must reach every route.
 */
export async function eventLoopGuard(app: FastifyInstance, { config, metrics }: { config: Config; metrics: Metrics }): Promise<void> {
  if (config.maxEventLoopDelayMs === 0) return;
  await app.register(underPressure, {
    maxEventLoopDelay: config.maxEventLoopDelayMs,
    sampleInterval: SAMPLE_INTERVAL_MS,
    pressureHandler: (request: FastifyRequest, reply: FastifyReply, _type: string, value: number | undefined) => {
      if (!request.url.startsWith("/v1/") && request.url !== "/readyz") return;
      shed(reply, "event_loop_delay", `overloaded: the event loop lags ${Math.round(value ?? 0)} ms`, metrics);
    },
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
