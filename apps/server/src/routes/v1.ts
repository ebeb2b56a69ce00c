import type { FastifyInstance } from "fastify";
import { type LoadShedder, loadShedding } from "../overload";
import { notFound } from "../replies";
import { type KvRoutesOptions, kvRoutes } from "./kv";

export interface V1RoutesOptions extends KvRoutesOptions {
  shedder: LoadShedder;
}

/**
 * The `/v1` API: every request under it, to a route or not, passes load shedding first; each
 * group of routes then adds its own checks (the key routes, the bearer token).
 */
export async function v1Routes(app: FastifyInstance, { shedder, server, config, metrics, waiters }: V1RoutesOptions): Promise<void> {
  app.addHook("onRequest", loadShedding(shedder));
  app.setNotFoundHandler(notFound);
  await app.register(kvRoutes, { server, config, metrics, waiters });
}
