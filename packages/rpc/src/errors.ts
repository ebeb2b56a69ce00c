export type KvErrorCode =
  | "ERR_KV_NO_REPLY"
  | "ERR_KV_UNAVAILABLE"
  | "ERR_KV_OUTCOME_UNKNOWN"
  | "ERR_KV_STORE_OPEN"
  | "ERR_KV_BAD_REQUEST"
  | "ERR_KV_UNAUTHORIZED"
  | "ERR_KV_TOO_LARGE"
  | "ERR_KV_PROTOCOL"
  | "ERR_KV_CLOSED";

/** A real failure of a kv call, told apart by `code` (see {@link hasCode}). */
export class KvError extends Error {
  constructor(
    readonly code: KvErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A try that got no reply: refused, reset or timed out. It may or may not have been applied. */
export class NetworkError extends KvError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_KV_NO_REPLY", message, options);
  }
}

/**
 * The server refused a request without applying it (503 overloaded or shutting down, 429):
 * a retry cannot make the outcome ambiguous. `retryAfterMs` is the server's `Retry-After`.
 */
export class UnavailableError extends KvError {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
    options?: ErrorOptions,
  ) {
    super("ERR_KV_UNAVAILABLE", message, options);
  }
}

/** The caller's signal aborted the call: Node's shape (`code: "ABORT_ERR"`), the signal's reason as `cause`. */
export class AbortError extends Error {
  readonly code = "ABORT_ERR";
  override name = "AbortError";
  constructor(message = "the operation was aborted", options?: ErrorOptions) {
    super(message, options);
  }
}

/** A bad argument, rejected before anything is sent; Node's own code for the case. */
export class InvalidArgumentError extends TypeError {
  readonly code = "ERR_INVALID_ARG_VALUE";
  override name = "InvalidArgumentError";
}

/** Match on code, not instanceof: two installed copies of @kv/rpc defeat instanceof. */
export const hasCode = (e: unknown, code: string): boolean => e instanceof Error && (e as { code?: unknown }).code === code;
