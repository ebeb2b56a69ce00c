import { createRequire } from "node:module";
import type { Duplex } from "node:stream";
import swagger from "@fastify/swagger";
import { hasCode } from "@kv/rpc";
import { KVServer, type Store } from "@kv/server";
import Fastify, { type FastifyError, type FastifyInstance, LogController } from "fastify";
import type { Config } from "./config";
import { refuse } from "./replies";
import { healthRoutes } from "./routes/health";
import { kvRoutes } from "./routes/kv";

const { version } = createRequire(import.meta.url)("../package.json") as { version: string };

// JSON can spell one byte of a string as six (`\u0001`): a value at the limit must still fit.
const JSON_ESCAPE_FACTOR = 6;
const BODY_OVERHEAD_BYTES = 4096;

/**
 * The kv HTTP server (contract §4) over `store`, ready but not listening. Closing the app
 * closes the store, after the requests in flight are answered.
 */
export async function buildApp(config: Config, store: Store): Promise<FastifyInstance> {
  const app = Fastify({
    logger: { level: config.logLevel, redact: ["req.headers.authorization"] },
    // One log line per request would cost more than the request on this hot path;
    // errors and lifecycle events are still logged.
    logController: new LogController({ disableRequestLogging: true }),
    // Fastify's own 503 while closing has no `err`; the onRequest hook below sends the contract's.
    return503OnClosing: false,
    bodyLimit: config.maxValueBytes * JSON_ESCAPE_FACTOR + BODY_OVERHEAD_BYTES,
    // The router measures the decoded key in UTF-16 code units, never more than its UTF-8 bytes:
    // past this a key is too long for certain and frameworkErrors refuses it; a shorter one
    // reaches the key route, which counts its bytes and says how many arrived.
    routerOptions: { maxParamLength: config.maxKeyBytes * 3 },
    // The protocol is strict (contract §4): no coercion of "1" to 1, no silently dropped fields.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false } },
    frameworkErrors: (err, _request, reply) => {
      const tooLong = hasCode(err, "FST_ERR_MAX_PARAM_LENGTH");
      const { maxKeyBytes } = config;
      refuse(reply, "ErrBadRequest", tooLong ? `key must be at most ${maxKeyBytes} UTF-8 bytes, got over ${maxKeyBytes * 3}` : err.message);
    },
    // Keys and values do not depend on Host; Node's own refusal of a missing one has no body.
    http: { requireHostHeader: false },
    clientErrorHandler: (err, socket) => {
      // Requests Node's parser refuses (bad request line, headers too large) get the contract's shape too.
      if (!socket.writable) return socket.destroy(err);
      socket.end(rawBadRequest(err.message));
    },
  });
  // What Node answers itself, with no body, gets the contract's shape as well.
  app.server.on("connect", (_request, socket: Duplex) => socket.end(rawBadRequest("CONNECT is not supported")));
  app.server.on("checkExpectation", (request, response) => {
    const body = JSON.stringify({ err: "ErrBadRequest", message: `unsupported expectation: ${request.headers.expect}` });
    response.writeHead(417, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
  });

  await app.register(swagger, {
    openapi: {
      info: { title: "kv", version, description: "Versioned key/value store with conditional puts" },
    },
  });

  // Only JSON bodies: a text/plain put is refused, not parsed as a string.
  app.removeContentTypeParser("text/plain");

  app.setErrorHandler<FastifyError>((err, request, reply) => {
    if (err.validation) {
      const extra = err.validation[0]?.params?.additionalProperty;
      return refuse(reply, "ErrBadRequest", extra === undefined ? err.message : `${err.message}: ${JSON.stringify(extra)}`);
    }
    if (hasCode(err, "FST_ERR_CTP_BODY_TOO_LARGE")) {
      return refuse(reply, "ErrTooLarge", `request body is over ${app.initialConfig.bodyLimit} bytes`);
    }
    if (hasCode(err, "FST_ERR_CTP_INVALID_MEDIA_TYPE")) {
      return refuse(reply, "ErrBadRequest", `content-type must be application/json, got ${request.headers["content-type"]}`);
    }
    if (hasCode(err, "ERR_INVALID_ARG_VALUE")) return refuse(reply, "ErrBadRequest", err.message);
    if (hasCode(err, "ERR_KV_CLOSED")) return refuse(reply, "ErrUnavailable", "the server is shutting down");
    // The store's backend refused the value as too large (etcd's request limit).
    if (hasCode(err, "ERR_KV_TOO_LARGE")) return refuse(reply, "ErrTooLarge", err.message);
    // The store did not apply it (its backend is unreachable): a retry is safe.
    if (hasCode(err, "ERR_KV_UNAVAILABLE")) {
      request.log.warn({ err }, "store unavailable");
      return refuse(reply.header("retry-after", "1"), "ErrUnavailable", err.message);
    }
    // The store sent the put on but cannot say whether it was applied (contract §4).
    if (hasCode(err, "ERR_KV_OUTCOME_UNKNOWN")) {
      request.log.warn({ err }, "store could not confirm a put");
      return refuse(reply, "ErrMaybe", err.message);
    }
    if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
      return refuse(reply, "ErrBadRequest", err.message);
    }
    request.log.error({ err }, "request failed");
    return refuse(reply, "ErrInternal", "internal error");
  });

  app.setNotFoundHandler((request, reply) =>
    refuse(reply, "ErrNotFound", `no route ${request.method} ${request.url.split("?")[0]}`),
  );

  // While closing: requests already running are answered; a request that arrives now is refused
  // before it touches the store, so a clerk may retry it elsewhere without ambiguity. Every
  // reply then ends its connection: a keep-alive socket would hold the process up.
  let isClosing = false;
  app.addHook("preClose", async () => {
    isClosing = true;
  });
  app.addHook("onRequest", (_request, reply, done) => {
    if (isClosing) refuse(reply, "ErrUnavailable", "the server is shutting down");
    done();
  });
  app.addHook("onSend", (_request, reply, payload, done) => {
    if (isClosing) reply.header("connection", "close");
    done(null, payload);
  });
  app.addHook("onClose", () => store.close());

  await app.register(healthRoutes, { store });
  await app.register(kvRoutes, { prefix: "/v1", server: new KVServer(store), config });
  app.get("/openapi.json", { schema: { hide: true } }, () => app.swagger());

  await app.ready();
  return app;
}

/** A whole HTTP/1.1 400 reply in the contract's shape, for a socket Fastify never saw a request on. */
function rawBadRequest(message: string): string {
  const body = JSON.stringify({ err: "ErrBadRequest", message });
  return `HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
