import type { FastifyInstance } from "fastify";

/**
 * `/healthz`: the process is up. `/readyz`: it serves requests; while closing, every new
 * request, readiness included, is answered 503 `ErrUnavailable` (see `buildApp`).
 */
export async function healthRoutes(app: FastifyInstance): Promise<void> {
  const Status = {
    type: "object",
    properties: { status: { type: "string" } },
    required: ["status"],
    additionalProperties: false,
  } as const;
  app.get("/healthz", { schema: { response: { 200: Status } } }, async () => ({ status: "ok" }));
  app.get("/readyz", { schema: { response: { 200: Status } } }, async () => ({ status: "ready" }));
}
