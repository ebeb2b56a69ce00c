import {
  ErrorReply,
  GetOkReply,
  GetQuery,
  KeyParams,
  KV_ROUTE,
  MAX_VERSION,
  MAX_WAIT_MS,
  NoKeyReply,
  PutBody,
  PutOkReply,
  statusByErr,
  VersionReply,
} from "@kv/rpc";
import type { KVServer } from "@kv/server";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Config } from "../config";
import { bearerTokenCheck } from "../auth";
import type { Metrics } from "../metrics";
import type { Waiters } from "../waiters";
import { refuse } from "../replies";

export interface KvRoutesOptions {
  server: KVServer;
  config: Config;
  metrics: Metrics;
  waiters: Waiters;
}

type KeyRequest = { Params: { key: string }; Querystring: GetQuery };

const route = KV_ROUTE.replace(/^\/v1/, "");

/**
 * `/v1/kv/:key` GET and PUT (contract §4), behind the bearer token when one is configured
 * (load shedding, in the app's onRequest hook, comes first).
 */
export async function kvRoutes(app: FastifyInstance, { server, config, metrics, waiters }: KvRoutesOptions): Promise<void> {
  if (config.authToken !== undefined) app.addHook("onRequest", bearerTokenCheck(config.authToken));

  /** The decoded key, or undefined after refusing the request. */
  const checkKey = (key: string, reply: FastifyReply): string | undefined => {
    if (key === "") {
      refuse(reply, "ErrBadRequest", "key must not be empty");
      return undefined;
    }
    const bytes = Buffer.byteLength(key);
    if (bytes > config.maxKeyBytes) {
      refuse(reply, "ErrBadRequest", `key must be at most ${config.maxKeyBytes} UTF-8 bytes, got ${bytes}`);
      return undefined;
    }
    return key;
  };

  app.get<KeyRequest>(
    route,
    {
      schema: {
        summary: "Read a key; with waitVersion and waitMs, wait for it to change (long-poll)",
        params: KeyParams,
        querystring: GetQuery,
        response: { 200: GetOkReply, 404: NoKeyReply, "4xx": ErrorReply, "5xx": ErrorReply },
      },
    },
    async (request, reply) => {
      const key = checkKey(request.params.key, reply);
      if (key === undefined) return reply;
      const { waitVersion, waitMs } = request.query;
      if (waitVersion === undefined && waitMs === undefined) {
        const result = await server.get(key);
        return reply.code(statusByErr[result.err]).send(result);
      }
      if (waitVersion === undefined || waitMs === undefined) return refuse(reply, "ErrBadRequest", "waitVersion and waitMs go together");
      const wait = { version: Number(waitVersion), ms: Number(waitMs) };
      if (wait.version > MAX_VERSION)
        return refuse(reply, "ErrBadRequest", `waitVersion must be at most ${MAX_VERSION}, got ${waitVersion}`);
      if (wait.ms > MAX_WAIT_MS) return refuse(reply, "ErrBadRequest", `waitMs must be at most ${MAX_WAIT_MS}, got ${waitMs}`);
      const result = await waiters.wait(reply, (signal) => server.get(key, { wait, signal }));
      if (result === undefined) return reply; // refused: too many waiting
      return reply.code(statusByErr[result.err]).send(result);
    },
  );

  app.put<KeyRequest & { Body: PutBody }>(
    route,
    {
      schema: {
        summary: "Write a key if its version matches",
        params: KeyParams,
        querystring: GetQuery,
        body: PutBody,
        response: { 200: PutOkReply, 404: NoKeyReply, 409: VersionReply, "4xx": ErrorReply, "5xx": ErrorReply },
      },
    },
    async (request, reply) => {
      const key = checkKey(request.params.key, reply);
      if (key === undefined) return reply;
      const { value, version, id } = request.body;
      const valueBytes = Buffer.byteLength(value);
      if (valueBytes > config.maxValueBytes) {
        return refuse(reply, "ErrTooLarge", `value must be at most ${config.maxValueBytes} UTF-8 bytes, got ${valueBytes}`);
      }
      // A lone surrogate has no UTF-8 form: it could not be stored and read back as sent.
      if (!value.isWellFormed()) return refuse(reply, "ErrBadRequest", "body value must be well-formed Unicode");
      if (id !== undefined && !id.isWellFormed()) return refuse(reply, "ErrBadRequest", "body id must be well-formed Unicode");
      const result = await server.put(key, value, version, id);
      if (result.err === "ErrVersion") metrics.putConflicts.inc();
      return reply.code(statusByErr[result.err]).send(result);
    },
  );

  // A key route reached without a key, and the methods the key route does not have.
  const noKey = async (_: unknown, reply: FastifyReply) => refuse(reply, "ErrBadRequest", "key must not be empty");
  app.route({ method: ["GET", "PUT"], url: "/kv", schema: { hide: true }, handler: noKey });
  app.route({
    method: ["POST", "DELETE", "PATCH", "OPTIONS", "TRACE"],
    url: route,
    schema: { hide: true },
    handler: async (request, reply) =>
      refuse(reply.header("allow", "GET, HEAD, PUT"), "ErrMethodNotAllowed", `${request.method} is not allowed on a key`),
  });
}
