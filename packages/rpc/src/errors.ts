export type KvErrorCode =
  | "ERR_KV_NO_REPLY"
  | "ERR_KV_BAD_REQUEST"
  | "ERR_KV_UNAUTHORIZED"
  | "ERR_KV_TOO_LARGE"
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

/** A bad argument, rejected before anything is sent; Node's own code for the case. */
export class InvalidArgumentError extends TypeError {
  readonly code = "ERR_INVALID_ARG_VALUE";
  override name = "InvalidArgumentError";
}

/** Match on code, not instanceof: two installed copies of @kv/rpc defeat instanceof. */
export const hasCode = (e: unknown, code: string): boolean =>
  e instanceof Error && (e as { code?: unknown }).code === code;
