/** The kv route; `:key` is one percent-encoded path segment. */
export const KV_ROUTE = "/v1/kv/:key";
/** The path before the key: `kvPath(key)` is this followed by the encoded key. */
export const KV_PREFIX = "/v1/kv/";

/**
 * The request path for `key`: one segment, percent-encoded. `.` and `..` stay as they are, so
 * the path must be sent raw (URL parsers would resolve them away).
 * Throws `URIError` for a string with a lone surrogate, which has no UTF-8 encoding.
 */
export const kvPath = (key: string): string => KV_PREFIX + encodeURIComponent(key);

/** The `err` of every reply, with its HTTP status: the one place the two are paired. */
export const statusByErr = {
  OK: 200,
  ErrNoKey: 404,
  ErrVersion: 409,
  ErrBadRequest: 400,
  ErrUnauthorized: 401,
  ErrNotFound: 404,
  ErrMethodNotAllowed: 405,
  ErrRequestTimeout: 408,
  ErrTooLarge: 413,
  ErrInternal: 500,
  ErrUnavailable: 503,
  ErrMaybe: 504,
} as const;
/** Every `err` a kv server may answer with. */
export type ReplyErr = keyof typeof statusByErr;
