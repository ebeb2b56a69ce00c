import { createRequire } from "node:module";
import { KVServer, type Store } from "@kv/server";
import Fastify, { type FastifyInstance } from "fastify";
import type { Config } from "./config";
import { Connections, connectionsPlugin } from "./connections";
import { replyToError } from "./error-replies";
import { fastifyOptions } from "./fastify-options";
import { longPollPlugin } from "./long-poll";
import { Metrics, measureStore, requestMetricsPlugin } from "./metrics";
import { LoadShedder } from "./overload";
import { notFound } from "./replies";
import { echoRequestIdPlugin } from "./request-ids";
import { healthRoutes } from "./routes/health";
import { metricsRoutes } from "./routes/metrics";
import { openApiPlugin } from "./routes/openapi";
import { v1Routes } from "./routes/v1";
import { shutdownPlugin } from "./shutdown";
import { Waiters } from "./waiters";

// From src/ and from the bundle in dist/ alike.
const { version } = createRequire(import.meta.url)("../package.json") as { version: string };

/** What `buildApp` needs besides the configuration: key material read from files, by `main`. */
export interface AppOptions {
  /** Serve HTTPS with this PEM certificate chain and key (see `loadTls`). */
  https?: { cert: string | Buffer; key: string | Buffer };
}

/**
 * The kv HTTP server (contract §4) over `store`, ready but not listening. Closing the app
 * closes the store, after the requests in flight are answered.
 */
export async function buildApp(config: Config, plainStore: Store, options: AppOptions = {}): Promise<FastifyInstance> {
  const metrics = new Metrics();
  const store = measureStore(plainStore, storeKindOf(plainStore), metrics);
  const waiters = new Waiters(config.maxWaiters, metrics);
  const shedder = new LoadShedder(config, metrics);
  // A reply must start to leave within the time a request may take to arrive.
  const connections = new Connections({ maxConnections: config.maxConnections, sendTimeoutMs: config.requestTimeoutMs });
  const app = Fastify(fastifyOptions(config, options, connections.refuseClientError));

  await app.register(longPollPlugin);
  // Every request, in this order: dropped if its connection was given up on, counted, refused while closing.
  await app.register(connectionsPlugin, { connections });
  await app.register(requestMetricsPlugin, { metrics });
  await app.register(shutdownPlugin, { waiters, connections });
  await app.register(echoRequestIdPlugin);
  app.removeContentTypeParser("text/plain"); // only JSON bodies: a text/plain put is refused, not read as a string
  app.setErrorHandler(replyToError);
  app.setNotFoundHandler(notFound);
  app.addHook("onClose", () => {
    shedder.close();
    return store.close(); // after the requests in flight are answered
  });

  await app.register(openApiPlugin, { version });
  await app.register(healthRoutes, { store, shedder });
  await app.register(v1Routes, { prefix: "/v1", server: new KVServer(store), config, metrics, waiters, shedder });
  await app.register(metricsRoutes, { metrics, config });
  await app.ready();
  return app;
}

/** `memory`, `lmdb`, `etcd`: the store's kind, for metric labels, from its class name. */
const storeKindOf = (store: Store): string => store.constructor.name.replace(/Store$/, "").toLowerCase() || "store";
