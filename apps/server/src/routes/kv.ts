import {
  checkKey,
  checkValue,
  checkVersion,
  checkWait,
  DeleteOkReply,
  DeleteQuery,
  ErrorReply,
  GetOkReply,
  GetQuery,
  KeyParams,
  KV_ROUTE,
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

/** `/v1/kv/:key` GET, PUT and DELETE (contract §4), behind the bearer token when one is configured. */
export async function kvRoutes(app: FastifyInstance, { server, config, metrics, waiters }: KvRoutesOptions): Promise<void> {
  if (config.authToken !== undefined) app.addHook("onRequest", bearerTokenCheck(config.authToken));

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
      const { key } = request.params;
      checkKey(key, config.maxKeyBytes);
      if (!request.isLongPoll) {
        const result = await server.get(key);
        return reply.code(statusByErr[result.err]).send(result);
      }
      const wait = checkWait(request.query.waitVersion, request.query.waitMs);
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
      const { key } = request.params;
      checkKey(key, config.maxKeyBytes);
      const { value, version, id, retry } = request.body;
      checkValue(value, config.maxValueBytes);
      // A try held here past the request timeout (a paused process, a stalled loop) could
      // outlive its completion record: refused, not applied; the clerk's retry decides it.
      if (id !== undefined && reply.elapsedTime > config.requestTimeoutMs) {
        return refuse(reply, "ErrUnavailable", "the put waited too long to reach the store: not applied");
      }
      const result = await server.put(key, value, version, id, { isRetry: retry === true });
      if (result.err === "ErrVersion") metrics.putConflicts.inc();
      return reply.code(statusByErr[result.err]).send(result);
    },
  );

  app.delete<{ Params: { key: string }; Querystring: DeleteQuery }>(
    route,
    {
      schema: {
        summary: "Delete a key; with version, only at that version",
        params: KeyParams,
        querystring: DeleteQuery,
        response: { 200: DeleteOkReply, 404: NoKeyReply, 409: VersionReply, "4xx": ErrorReply, "5xx": ErrorReply },
      },
    },
    async (request, reply) => {
      const { key } = request.params;
      checkKey(key, config.maxKeyBytes);
      const { id, retry } = request.query;
      const version = request.query.version === undefined ? undefined : Number(request.query.version);
      if (version !== undefined) checkVersion(version);
      // As for a put: a try held past the request timeout could outlive its completion record.
      if (id !== undefined && reply.elapsedTime > config.requestTimeoutMs) {
        return refuse(reply, "ErrUnavailable", "the delete waited too long to reach the store: not applied");
      }
      const result = await server.delete(key, version, id, { isRetry: retry === "true" });
      return reply.code(statusByErr[result.err]).send(result);
    },
  );

  // A key route reached without a key, and the methods the key route does not have.
  const noKey = async (_: unknown, reply: FastifyReply) => refuse(reply, "ErrBadRequest", "key must not be empty");
  app.route({ method: ["GET", "PUT", "DELETE"], url: "/kv", schema: { hide: true }, handler: noKey });
  app.route({
    method: ["POST", "PATCH", "OPTIONS", "TRACE"],
    url: route,
    schema: { hide: true },
    handler: async (request, reply) =>
      refuse(reply.header("allow", "GET, HEAD, PUT, DELETE"), "ErrMethodNotAllowed", `${request.method} is not allowed on a key`),
  });
}
