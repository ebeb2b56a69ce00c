import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import swagger from "@fastify/swagger";
import { hasCode } from "@kv/rpc";
import { KVServer, type Store } from "@kv/server";
import Fastify, { type FastifyError, type FastifyInstance, LogController } from "fastify";
import { bearerTokenCheck } from "./auth";
import type { Config } from "./config";
import { Connections } from "./connections";
import { Metrics, measureStore } from "./metrics";
import { LoadShedder } from "./overload";
import { Waiters } from "./waiters";
import { refuse } from "./replies";
import { healthRoutes } from "./routes/health";
import { kvRoutes } from "./routes/kv";

const { version } = createRequire(import.meta.url)("../package.json") as { version: string };

// JSON can spell one byte of a string as six (`\u0001`): a value at the limit must still fit.
const JSON_ESCAPE_FACTOR = 6;
const BODY_OVERHEAD_BYTES = 4096;
const REQUEST_ID = /^[\w.:-]{1,64}$/;

/** What `buildApp` needs besides the configuration: key material read from files, by `main`. */
export interface AppOptions {
  /** Serve HTTPS with this PEM certificate chain and key (see `loadTls`). */
  https?: { cert: string | Buffer; key: string | Buffer };
}

/**
 * The kv HTTP server (contract §4) over `store`, ready but not listening. Closing the app
 * closes the store, after the requests in flight are answered.
 */
export async function buildApp(config: Config, plainStore: Store, options: AppOptions = {}): Promise<FastifyInstance> {
  const metrics = new Metrics();
  const store = measureStore(plainStore, storeKindOf(plainStore), metrics);
  // Node's own limits on slow clients: headers, then the whole request, must arrive in time
  // (checked every so often: often enough that a slow-loris connection ends near its deadline).
  const serverOptions = {
    requireHostHeader: false, // keys and values do not depend on Host; Node's refusal of a missing one has no body
    headersTimeout: config.headersTimeoutMs,
    connectionsCheckingInterval: Math.max(100, Math.min(1_000, config.headersTimeoutMs / 4)),
  };
  const processId = randomUUID().slice(0, 8); // tells this process's request ids from another's
  let requests = 0;
  const app = Fastify({
    // Over TLS the handshake comes before the headers: it gets the same deadline.
    ...(options.https === undefined
      ? { http: serverOptions }
      : { https: { ...serverOptions, handshakeTimeout: config.headersTimeoutMs, ...options.https } }),
    requestTimeout: config.requestTimeoutMs,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    logger: { level: config.logLevel, redact: ["req.headers.authorization"] },
    // A caller's X-Request-Id, when it is a plain short id, names the request in our logs too
    // (and is echoed); else a counter, unique in this process, does.
    genReqId: (request) => {
      const given = request.headers["x-request-id"];
      return typeof given === "string" && REQUEST_ID.test(given) ? given : `${processId}-${++requests}`;
    },
    // One log line per request would cost more than the request on this hot path: at info and
    // above only errors and lifecycle events are logged; at debug and trace, every request too.
    logController: new LogController({ disableRequestLogging: !["debug", "trace"].includes(config.logLevel) }),
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
    clientErrorHandler: (err, socket) => {
      // Requests Node's parser refuses (bad request line, headers too large) get the contract's
      // shape too; one that did not arrive within KV_HEADERS_TIMEOUT_MS / KV_REQUEST_TIMEOUT_MS, 408.
      const refusal = hasCode(err, "ERR_HTTP_REQUEST_TIMEOUT")
        ? rawReply(408, "Request Timeout", "ErrRequestTimeout", "the request did not arrive in time")
        : rawReply(400, "Bad Request", "ErrBadRequest", err.message);
      connections.refuse(socket, refusal, err);
    },
  });
  // A reply must start to leave within the time a request may take to arrive.
  const connections = new Connections(app.server, { isTls: options.https !== undefined, sendTimeoutMs: config.requestTimeoutMs });
  // What Node answers itself, with no body, gets the contract's shape as well (in order, after
  // the requests before it).
  app.server.on("connect", (_request, socket: Socket) =>
    connections.refuse(socket, rawReply(400, "Bad Request", "ErrBadRequest", "CONNECT is not supported")),
  );
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

  app.setNotFoundHandler((request, reply) => refuse(reply, "ErrNotFound", `no route ${request.method} ${request.url.split("?")[0]}`));

  // While closing: requests already running are answered; a request that arrives now is refused
  // before it touches the store, so a clerk may retry it elsewhere without ambiguity. Every
  // reply then ends its connection: a keep-alive socket would hold the process up.
  let isClosing = false;
  const waiters = new Waiters(config.maxWaiters, metrics);
  app.addHook("preClose", async () => {
    isClosing = true;
    waiters.endAll(); // long-poll reads answer now, with the state as it is
    connections.startClosing(rawReply(503, "Service Unavailable", "ErrUnavailable", "the server is shutting down"));
  });
  app.addHook("onSend", (request, reply, payload, done) => {
    if (isClosing) reply.header("connection", "close");
    if (request.headers["x-request-id"] === request.id) reply.header("x-request-id", request.id);
    done(null, payload);
  });
  const shedder = new LoadShedder(config, metrics);
  app.addHook("onClose", () => {
    shedder.close();
    connections.close();
    return store.close();
  });
  // One hook for every request, on this hot path. It counts the request in — in flight, and
  // owed a reply on its connection (see Connections) — and one "close" listener counts
  // it out: "close" comes once, answered or abandoned (a client that left while the store
  // worked sees neither onResponse nor onRequestAbort). Then, before the store is touched:
  // refused while closing, or shed when overloaded.
  app.addHook("onRequest", (request, reply, done) => {
    // Its connection was given up on (refused, ended, closing): a peer still sending there gets
    // no more of the server's time. Never handled, never answered.
    if (!connections.isOpen(request.raw.socket)) return void request.raw.socket.destroy();
    const isCounted = shedder.counts(request.method, request.url);
    // Long-polls get a route of their own in the metrics: their minute-long waits are not latency.
    const isLongPoll = !isCounted && request.url.startsWith("/v1/");
    const route = `${request.routeOptions.url ?? "unmatched"}${isLongPoll ? "?wait" : ""}`;
    connections.owe(reply.raw);
    metrics.inFlight.inc();
    let isLetIn = false;
    reply.raw.on("close", () => {
      metrics.inFlight.dec();
      if (isLetIn) shedder.leave();
      if (reply.raw.writableFinished) metrics.answered(route, request.method, reply.raw.statusCode, reply.elapsedTime / 1000);
      connections.settle(reply.raw);
    });
    if (isClosing) refuse(reply, "ErrUnavailable", "the server is shutting down");
    else isLetIn = shedder.enter(request.method, request.url, reply) && isCounted;
    done();
  });
  app.server.maxConnections = config.maxConnections;

  await app.register(healthRoutes, { store });
  await app.register(kvRoutes, { prefix: "/v1", server: new KVServer(store), config, metrics, waiters });
  app.get("/openapi.json", { schema: { hide: true } }, () => app.swagger());
  app.get("/metrics", {
    schema: { hide: true },
    ...(config.isMetricsAuthRequired && config.authToken !== undefined && { onRequest: bearerTokenCheck(config.authToken) }),
    handler: async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  });

  await app.ready();
  return app;
}

/** `memory`, `lmdb`, `etcd`: the store's kind, for metric labels, from its class name. */
const storeKindOf = (store: Store): string => store.constructor.name.replace(/Store$/, "").toLowerCase() || "store";

/** A whole HTTP/1.1 reply in the contract's shape, for a socket Fastify never saw a request on. */
function rawReply(status: number, reason: string, err: string, message: string): string {
  const body = JSON.stringify({ err, message });
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
