import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

const REQUEST_ID = /^[\w.:-]{1,64}$/;

/**
 * Fastify's `genReqId`: a caller's `X-Request-Id`, when it is a plain short id, names the
 * request in our logs too; else a counter, prefixed by a tag of this process.
 */
export function requestIds(): (request: { headers: Record<string, string | string[] | undefined> }) => string {
  const processId = randomUUID().slice(0, 8); // tells this process's request ids from another's
  let requests = 0;
  return (request) => {
    const given = request.headers["x-request-id"];
    return typeof given === "string" && REQUEST_ID.test(given) ? given : `${processId}-${++requests}`;
  };
}

/** Echoes a caller's `X-Request-Id` that named the request. */
export const echoRequestIdPlugin = fp(
  async (app: FastifyInstance) => {
    app.addHook("onSend", (request, reply, payload, done) => {
      if (request.headers["x-request-id"] === request.id) reply.header("x-request-id", request.id);
      done(null, payload);
    });
  },
  { name: "kv-request-ids" },
);
