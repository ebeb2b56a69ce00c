import type { Store } from "@kv/server";
import type { FastifyInstance } from "fastify";
import { refuse } from "../replies";

/**
 * `/healthz`: the process is up. `/readyz`: it serves requests — the store is ready (an etcd
 * store is not while etcd has no quorum or cannot be reached); while closing, every new
 * request, readiness included, is answered 503 `ErrUnavailable` (see `buildApp`).
 */
export async function healthRoutes(app: FastifyInstance, { store }: { store: Store }): Promise<void> {
  const Status = {
    type: "object",
    properties: { status: { type: "string" } },
    required: ["status"],
    additionalProperties: false,
  } as const;
  app.get("/healthz", { schema: { response: { 200: Status } } }, async () => ({ status: "ok" }));
  app.get("/readyz", { schema: { response: { 200: Status } } }, async (_request, reply) => {
    if (store.isReady !== undefined && !(await store.isReady())) return refuse(reply, "ErrUnavailable", "the store is not reachable");
    return { status: "ready" };
  });
}
