import swagger from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

/** `/openapi.json`: the protocol as OpenAPI 3, from the same schemas that validate requests (registered before the routes it describes). */
export const openApiPlugin = fp(
  async (app: FastifyInstance, { version }: { version: string }) => {
    await app.register(swagger, {
      openapi: { info: { title: "kv", version, description: "Versioned key/value store with conditional puts" } },
    });
    app.get("/openapi.json", { schema: { hide: true } }, () => app.swagger());
  },
  { name: "kv-openapi" },
);
