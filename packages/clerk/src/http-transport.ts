import {
  type DeleteRequest,
  type DeleteResult,
  type GetResult,
  KvError,
  kvPath,
  NetworkError,
  type PutRequest,
  type PutResult,
  statusByErr,
  type Transport,
  type TransportCallOptions,
  UnavailableError,
  type WaitOptions,
} from "@kv/rpc";
import { Pool } from "undici";

export interface HttpTransportOptions {
  /** Base URLs of kv servers, e.g. `http://127.0.0.1:7070`; tried in turn on network failure. */
  endpoints: readonly string[];
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string | undefined;
  /** Trust a private CA for https endpoints. */
  tls?: { ca?: string | Buffer | undefined } | undefined;
  /** A connection not made within this counts as no reply (default: undici's 10 s). */
  connectTimeoutMs?: number | undefined;
}

interface Reply {
  status: number;
  body: {
    err?: unknown;
    value?: unknown;
    version?: unknown;
    revision?: unknown;
    modRevision?: unknown;
    createRevision?: unknown;
    message?: unknown;
  };
  retryAfterMs: number | undefined;
}

// Enough sockets for the concurrency one process puts through one clerk; more requests queue.
const CONNECTIONS_PER_ENDPOINT = 128;
// undici's codes for requests it will never send as given.
const PROGRAMMING_ERRORS = new Set(["UND_ERR_INVALID_ARG", "UND_ERR_INVALID_RETURN_VALUE", "UND_ERR_NOT_SUPPORTED"]);
// A proxy in front may rate-limit; kv itself never answers 429. Not applied, like a 503.
const TOO_MANY_REQUESTS = 429;
// A try with no deadline of its own; the clerk always gives one.
const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * One try of each call over HTTP/1.1 (undici): a keep-alive pool per endpoint, no pipelining, no
 * retries of its own. A try that gets no reply rejects `NetworkError` and moves the next try to
 * the next endpoint.
 */
export class HttpTransport implements Transport {
  /** kv servers keep completion records on every store (contract §2). */
  readonly keepsCompletionRecords = true;
  readonly #endpoints: readonly string[];
  readonly #pools: Pool[];
  readonly #headers: Record<string, string>;
  #current = 0;
  #closed: Promise<void> | undefined;

  constructor(options: HttpTransportOptions) {
    this.#endpoints = options.endpoints;
    const connect = {
      ...(options.tls?.ca !== undefined && { ca: options.tls.ca }),
      ...(options.connectTimeoutMs !== undefined && { timeout: options.connectTimeoutMs }),
    };
    this.#pools = options.endpoints.map((url) => new Pool(url, { connections: CONNECTIONS_PER_ENDPOINT, pipelining: 1, connect }));
    this.#headers = options.token === undefined ? {} : { authorization: `Bearer ${options.token}` };
  }

  async get(key: string, options?: TransportCallOptions & { wait?: WaitOptions | undefined }): Promise<GetResult> {
    const query = options?.wait === undefined ? "" : `?waitVersion=${options.wait.version}&waitMs=${options.wait.ms}`;
    const reply = await this.#send("GET", key, undefined, options, query);
    const { value, version, modRevision, createRevision } = reply.body;
    if (
      says(reply, "OK") &&
      typeof value === "string" &&
      typeof version === "number" &&
      typeof modRevision === "number" &&
      typeof createRevision === "number"
    ) {
      return { err: "OK", value, version, modRevision, createRevision };
    }
    if (says(reply, "ErrNoKey")) return { err: "ErrNoKey" };
    throw refusal(reply);
  }

  async put(request: PutRequest, options?: TransportCallOptions): Promise<PutResult> {
    const { key, value, version, id, retry } = request;
    const reply = await this.#send("PUT", key, JSON.stringify({ value, version, id, retry }), options);
    const { version: made, revision } = reply.body;
    if (says(reply, "OK") && typeof made === "number" && typeof revision === "number") return { err: "OK", version: made, revision };
    if (says(reply, "ErrNoKey")) return { err: "ErrNoKey" };
    if (says(reply, "ErrVersion")) return { err: "ErrVersion" };
    throw refusal(reply);
  }

  async delete(request: DeleteRequest, options?: TransportCallOptions): Promise<DeleteResult> {
    const { key, version, id, retry } = request;
    const query = new URLSearchParams();
    if (version !== undefined) query.set("version", String(version));
    if (id !== undefined) query.set("id", id);
    if (retry !== undefined) query.set("retry", String(retry));
    const search = query.size === 0 ? "" : `?${query}`;
    const reply = await this.#send("DELETE", key, undefined, options, search);
    const { revision } = reply.body;
    if (says(reply, "OK") && typeof revision === "number") return { err: "OK", revision };
    if (says(reply, "ErrNoKey")) return { err: "ErrNoKey" };
    if (says(reply, "ErrVersion")) return { err: "ErrVersion" };
    throw refusal(reply);
  }

  /** Closes every pool once the requests in flight are done; idempotent. */
  close(): Promise<void> {
    this.#closed ??= Promise.all(this.#pools.map((p) => p.close())).then(() => undefined);
    return this.#closed;
  }

  async #send(
    method: "GET" | "PUT" | "DELETE",
    key: string,
    body: string | undefined,
    options: TransportCallOptions | undefined,
    query = "",
  ): Promise<Reply> {
    const signal = options?.signal;
    const timeoutMs = options?.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (this.#closed !== undefined) throw new KvError("ERR_KV_CLOSED", "the clerk is closed");
    const i = this.#current;
    const pool = this.#pools[i] as Pool;
    try {
      const res = await pool.request({
        method,
        path: kvPath(key) + query, // sent as is: `.` and `..` are keys, not path steps
        headers: body === undefined ? this.#headers : { ...this.#headers, "content-type": "application/json" },
        body,
        // undici's own timers keep the try's deadline; it closes the socket when they fire.
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        ...(signal && { signal }),
      });
      const text = await res.body.text(); // always consumed, so the socket goes back to the pool
      const retryAfter = res.headers["retry-after"];
      // A server refusing work (overloaded, shutting down): the next try goes to the next one.
      if (res.statusCode === statusByErr.ErrUnavailable || res.statusCode === TOO_MANY_REQUESTS)
        this.#current = (i + 1) % this.#pools.length;
      return {
        status: res.statusCode,
        body: parseBody(text),
        retryAfterMs: typeof retryAfter === "string" ? parseRetryAfter(retryAfter) : undefined,
      };
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      // undici refusing our own arguments is a bug here, not a lost reply: retrying cannot help.
      if (PROGRAMMING_ERRORS.has((err as { code?: string }).code ?? "")) throw err;
      if (this.#closed !== undefined) throw new KvError("ERR_KV_CLOSED", "the clerk is closed", { cause: err });
      this.#current = (i + 1) % this.#pools.length;
      throw new NetworkError(`no reply from ${this.#endpoints[i]}: ${(err as Error).message}`, { cause: err });
    }
  }
}

function parseBody(text: string): Reply["body"] {
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === "object" && parsed !== null ? parsed : {};
  } catch {
    return {};
  }
}

/** `Retry-After` in seconds or as an HTTP date, in ms from now. */
function parseRetryAfter(header: string): number | undefined {
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** Whether `reply` is the expected outcome `err`, with the status that goes with it. */
const says = (reply: Reply, err: "OK" | "ErrNoKey" | "ErrVersion"): boolean => reply.status === statusByErr[err] && reply.body.err === err;

/** Everything but an expected outcome, as the error the clerk acts on. */
function refusal({ status, body, retryAfterMs }: Reply): Error {
  const said = typeof body.message === "string" ? `: ${body.message}` : "";
  switch (status) {
    case statusByErr.ErrBadRequest:
      return new KvError("ERR_KV_BAD_REQUEST", `the server refused the request${said}`);
    case statusByErr.ErrUnauthorized:
      return new KvError("ERR_KV_UNAUTHORIZED", `the server wants a valid bearer token${said}`);
    case statusByErr.ErrTooLarge:
      return new KvError("ERR_KV_TOO_LARGE", `the value is over the server's limit${said}`);
    case statusByErr.ErrRequestTimeout: // the request did not reach the server in time: nothing was applied
    case TOO_MANY_REQUESTS:
    case statusByErr.ErrUnavailable:
      return new UnavailableError(`the server did not apply the request (${status})${said}`, retryAfterMs);
  }
  // 504 ErrMaybe (the store could not confirm) and any other 5xx: applied or not, nobody knows.
  if (status >= 500) return new NetworkError(`the server answered ${status}${said}`);
  return new KvError("ERR_KV_PROTOCOL", `unexpected reply ${status} ${JSON.stringify(body).slice(0, 200)}: is this a kv server?`);
}
