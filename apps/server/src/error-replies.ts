import type { ReplyErr } from "@kv/rpc";
import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import { refuse } from "./replies";

interface ErrorReply {
  err: Exclude<ReplyErr, "OK">;
  /** What the reply says; the error's own message when absent. */
  message?: (request: FastifyRequest) => string;
  /** A warning to log: the store is degraded, though the request was answered. */
  warning?: string;
  /** Seconds a client should wait before it tries again. */
  retryAfterSeconds?: number;
}

/** The contract's reply (§4) to each error a request may end in, by the error's code. */
const REPLIES_BY_CODE = new Map<string, ErrorReply>(
  Object.entries({
    FST_ERR_CTP_BODY_TOO_LARGE: {
      err: "ErrTooLarge",
      message: (request) => `request body is over ${request.routeOptions.bodyLimit} bytes`,
    },
    FST_ERR_CTP_INVALID_MEDIA_TYPE: {
      err: "ErrBadRequest",
      message: (request) => `content-type must be application/json, got ${request.headers["content-type"]}`,
    },
    // An argument rule of @kv/rpc (a key, value, version, id or wait).
    ERR_INVALID_ARG_VALUE: { err: "ErrBadRequest" },
    ERR_KV_CLOSED: { err: "ErrUnavailable", message: () => "the server is shutting down" },
    // A value over KV_MAX_VALUE_BYTES, or over what the store's backend takes (etcd's request limit).
    ERR_KV_TOO_LARGE: { err: "ErrTooLarge" },
    // The store did not apply it (its backend is unreachable): a retry is safe.
    ERR_KV_UNAVAILABLE: { err: "ErrUnavailable", warning: "store unavailable", retryAfterSeconds: 1 },
    // The store sent the put on but cannot say whether it was applied.
    ERR_KV_OUTCOME_UNKNOWN: { err: "ErrMaybe", warning: "store could not confirm a write" },
  } satisfies Record<string, ErrorReply>),
);

/**
 * The app's error handler: a failed validation is a 400 naming what was wrong; a coded error
 * gets its reply from the table above; any other 4xx is a 400; the rest is a 500 we caused,
 * logged at `error`.
 */
export function replyToError(err: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (err.validation) {
    const extra = err.validation[0]?.params?.additionalProperty;
    return refuse(reply, "ErrBadRequest", extra === undefined ? err.message : `${err.message}: ${JSON.stringify(extra)}`);
  }
  const known = REPLIES_BY_CODE.get(err.code);
  if (known !== undefined) {
    if (known.warning !== undefined) request.log.warn({ err }, known.warning);
    if (known.retryAfterSeconds !== undefined) reply.header("retry-after", String(known.retryAfterSeconds));
    return refuse(reply, known.err, known.message?.(request) ?? err.message);
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return refuse(reply, "ErrBadRequest", err.message);
  request.log.error({ err }, "request failed");
  return refuse(reply, "ErrInternal", "internal error");
}
