import type { Socket } from "node:net";
import { hasCode } from "@kv/rpc";
import type { Server } from "node:http";
import { type FastifyHttpOptions, LogController } from "fastify";
import type { AppOptions } from "./app";
import type { Config } from "./config";
import { refuse } from "./replies";
import { requestIds } from "./request-ids";

// JSON can spell one byte of a string as six (`\u0001`): a value at the limit must still fit.
const JSON_ESCAPE_FACTOR = 6;
const BODY_OVERHEAD_BYTES = 4096;

/**
 * Fastify's options for the kv server: Node's limits on slow clients, logging and request ids,
 * the body limit, a strict protocol (contract §4), and what answers errors that come before a
 * route: `onClientError` for bytes Node's parser refuses or that came too late.
 */
export function fastifyOptions(
  config: Config,
  { https }: AppOptions,
  onClientError: (err: Error, socket: Socket) => void,
): FastifyHttpOptions<Server> {
  // Headers, then the whole request, must arrive in time (checked every so often: often enough
  // that a slow-loris connection ends near its deadline).
  const serverOptions = {
    requireHostHeader: false, // keys and values do not depend on Host; Node's refusal of a missing one has no body
    headersTimeout: config.headersTimeoutMs,
    connectionsCheckingInterval: Math.max(100, Math.min(1_000, config.headersTimeoutMs / 4)),
  };
  return {
    // Over TLS the handshake comes before the headers: it gets the same deadline.
    ...(https === undefined
      ? { http: serverOptions }
      : { https: { ...serverOptions, handshakeTimeout: config.headersTimeoutMs, ...https } }),
    requestTimeout: config.requestTimeoutMs,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    logger: { level: config.logLevel, redact: ["req.headers.authorization"] },
    genReqId: requestIds(),
    // One log line per request would cost more than the request on this hot path: at info and
    // above only errors and lifecycle events are logged; at debug and trace, every request too.
    logController: new LogController({ disableRequestLogging: !["debug", "trace"].includes(config.logLevel) }),
    // Fastify's own 503 while closing has no `err`; the shutdown hook sends the contract's.
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
    clientErrorHandler: onClientError,
  };
}
