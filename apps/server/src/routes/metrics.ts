import type { FastifyInstance } from "fastify";
import { bearerTokenCheck } from "../auth";
import type { Config } from "../config";
import type { Metrics } from "../metrics";

/** `/metrics`: Prometheus text; behind the bearer token with `KV_METRICS_AUTH=true`. */
export async function metricsRoutes(app: FastifyInstance, { metrics, config }: { metrics: Metrics; config: Config }): Promise<void> {
  if (config.isMetricsAuthRequired && config.authToken !== undefined) app.addHook("onRequest", bearerTokenCheck(config.authToken));
  app.get("/metrics", { schema: { hide: true } }, async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
}
