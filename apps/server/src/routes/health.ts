import type { Store } from "@kv/server";
import type { FastifyInstance } from "fastify";
import type { LoadShedder } from "../overload";
import { refuse } from "../replies";

/**
 * `/healthz`: the process is up. `/readyz`: it serves requests — the event loop does not lag
 * and the store is ready (an etcd store is not while etcd has no quorum or cannot be reached);
 * while closing, every new request, readiness included, is answered 503 `ErrUnavailable`
 * (see `shutdownPlugin`).
 */
export async function healthRoutes(app: FastifyInstance, { store, shedder }: { store: Store; shedder: LoadShedder }): Promise<void> {
  const Status = {
    type: "object",
    properties: { status: { type: "string" } },
    required: ["status"],
    additionalProperties: false,
  } as const;
  app.get("/healthz", { schema: { response: { 200: Status } } }, async () => ({ status: "ok" }));
  app.get("/readyz", { schema: { response: { 200: Status } } }, async (_request, reply) => {
    if (shedder.isLagging()) return shedder.refuseLagging(reply);
    if (store.isReady !== undefined && !(await store.isReady())) return refuse(reply, "ErrUnavailable", "the store is not reachable");
    return { status: "ready" };
  });
}
