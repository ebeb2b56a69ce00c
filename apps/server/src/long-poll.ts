import { KV_ROUTE } from "@kv/rpc";
import type { FastifyInstance, FastifyRequest } from "fastify";
import fp from "fastify-plugin";

declare module "fastify" {
  interface FastifyRequest {
    /**
     * A read of a key that asks to wait for it to change (`?waitVersion&waitMs`, or either, which
     * is refused): told from the route and the parsed query, in this one place.
     */
    readonly isLongPoll: boolean;
  }
}

/** `request.isLongPoll`, for the load shedder, the metrics and the kv route alike. */
export const longPollPlugin = fp(
  async (app: FastifyInstance) => {
    app.decorateRequest("isLongPoll", {
      getter(this: FastifyRequest) {
        if (this.routeOptions.url !== KV_ROUTE || (this.method !== "GET" && this.method !== "HEAD")) return false;
        const query = this.query as { waitVersion?: unknown; waitMs?: unknown };
        return query.waitVersion !== undefined || query.waitMs !== undefined;
      },
    });
  },
  { name: "kv-long-poll" },
);
