import { randomUUID } from "node:crypto";
import { channel } from "node:diagnostics_channel";
import {
  AbortError,
  checkKey,
  checkValue,
  checkVersion,
  checkWait,
  type Clock,
  type DeleteResult,
  type GetResult,
  hasCode,
  InvalidArgumentError,
  KvError,
  type PutResult,
  type Transport,
  type TransportCallOptions,
  type UnavailableError,
} from "@kv/rpc";
import { backoffMs, systemClock } from "./backoff";
import { HttpTransport } from "./http-transport";

/** How a Clerk retries; every field optional. */
export interface RetryOptions {
  /** One try; a try that takes longer counts as no reply. */
  attemptTimeoutMs?: number;
  /** Waits between tries: exponential from `baseMs`, capped at `maxMs`, full jitter. */
  backoff?: { baseMs?: number; maxMs?: number };
  /**
   * A write is retried for at most this long, then answered `ErrMaybe` (default 60 000 ms:
   * below the server's `KV_ID_RETENTION_MS`, so every retry finds its completion record).
   */
  retryLimitMs?: number;
  /** Time to wait by (default: real time). Tests pass a simulated clock. */
  clock?: Clock;
}

/** `createClerk`'s options: where the servers are, and how to retry. */
export interface ClerkOptions extends Omit<RetryOptions, "clock"> {
  /** e.g. `["http://127.0.0.1:7070"]`; tried in turn on network failure. */
  endpoints: string[];
  /** Bearer token, when the server requires one. */
  token?: string;
  /** Trust a private CA for https endpoints. */
  tls?: { ca?: string | Buffer };
}

export interface CallOptions {
  signal?: AbortSignal;
}

/** `get`'s options: a signal, and a long-poll — both of `waitVersion` and `waitMs`, or neither. */
export interface GetOptions extends CallOptions {
  /** Answer once the key's version differs from this (0: once the key exists)… */
  waitVersion?: number;
  /** …or after this many ms (at most 60 000), with the state then. */
  waitMs?: number;
}

// Long enough for a durable commit or an etcd leader election; a lost reply costs no more.
const DEFAULT_ATTEMPT_TIMEOUT_MS = 5_000;
const DEFAULT_BACKOFF_BASE_MS = 10;
const DEFAULT_BACKOFF_MAX_MS = 1_000;
const DEFAULT_RETRY_LIMIT_MS = 60_000;
// What #retry answers once a write's retry limit is reached.
const GAVE_UP = Symbol("retryLimitMs reached");
// A server may ask for a long pause; past this the clerk tries again anyway (another endpoint may serve).
const MAX_RETRY_AFTER_MS = 30_000;

const retryChannel = channel("kv:clerk:retry");

/**
 * The kv client (contract §3): `get` and `put` with retries through lost requests and replies.
 * Safe to use from many concurrent callers; each call's state lives in the call.
 */
export class Clerk {
  readonly #transport: Transport;
  readonly #attemptTimeoutMs: number;
  readonly #baseMs: number;
  readonly #maxMs: number;
  readonly #retryLimitMs: number;
  readonly #clock: Clock;
  // Aborted by close(), so a call waiting out a backoff or a Retry-After stops at once.
  readonly #closing = new AbortController();
  #closed: Promise<void> | undefined;

  constructor(transport: Transport, options: RetryOptions = {}) {
    this.#transport = transport;
    this.#attemptTimeoutMs = positive("attemptTimeoutMs", options.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS);
    this.#baseMs = positive("backoff.baseMs", options.backoff?.baseMs ?? DEFAULT_BACKOFF_BASE_MS);
    this.#maxMs = positive("backoff.maxMs", options.backoff?.maxMs ?? DEFAULT_BACKOFF_MAX_MS);
    this.#retryLimitMs = positive("retryLimitMs", options.retryLimitMs ?? DEFAULT_RETRY_LIMIT_MS);
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * The key's value and version, or `ErrNoKey`. Retries until a server answers. With
   * `waitVersion` and `waitMs`, a long-poll: the answer comes once the key's version differs
   * from `waitVersion` (0: once the key exists), or after `waitMs` with the state then.
   * Rejects `InvalidArgumentError` for a bad key, `AbortError` when `signal` aborts, `KvError`
   * for a permanent refusal (`ERR_KV_UNAUTHORIZED`, `ERR_KV_BAD_REQUEST`) or after `close()`.
   */
  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    checkKey(key);
    const { waitVersion, waitMs } = options;
    if (waitVersion === undefined && waitMs === undefined)
      return this.#retryUntilAnswered(options.signal, (call) => this.#transport.get(key, call));
    const wait = checkWait(waitVersion, waitMs);
    // One wait however many tries it takes: a retry waits only for what is left of it, and
    // each try's deadline makes room for the wait.
    const deadline = this.#clock.now() + wait.ms;
    return this.#retryUntilAnswered(options.signal, (call) => {
      const ms = Math.max(0, Math.ceil(deadline - this.#clock.now()));
      return this.#transport.get(key, { ...call, timeoutMs: (call.timeoutMs ?? 0) + ms, wait: { version: wait.version, ms } });
    });
  }

  /**
   * Writes `value` if the key is at `version` (0: absent). Every try carries one put id, and
   * every try after the first says it is a retry; the first reply is the answer: a server that
   * keeps completion records answers each try the put's one decision. With no reply within
   * `retryLimitMs` it answers `ErrMaybe`: the put may have been applied. Against a server that
   * keeps no records (the transport says so), once a try got no reply a later `ErrVersion`
   * becomes `ErrMaybe` too. Refusals that say nothing was applied (503, 429) are retried on.
   * Rejects as `get` does, and `ERR_KV_TOO_LARGE` for a value over the limit.
   */
  async put(key: string, value: string, version: number, options: CallOptions = {}): Promise<PutResult> {
    checkKey(key);
    checkValue(value);
    checkVersion(version);
    return this.#write({ key, value, version }, options.signal, (request, call) => this.#transport.put(request, call));
  }

  /**
   * Removes `key` — with `options.version`, only when it is at that version — and answers the
   * store revision of the delete; `ErrNoKey` when absent, `ErrVersion` at another version. Retried
   * as a put (one id on every try, tries after the first marked): the first reply is the answer,
   * and `ErrMaybe` means no try was answered within `retryLimitMs` — or, against a server without
   * completion records, that a try went unanswered and a later one met `ErrNoKey` or `ErrVersion`.
   */
  async delete(key: string, options: CallOptions & { version?: number } = {}): Promise<DeleteResult> {
    checkKey(key);
    if (options.version !== undefined) checkVersion(options.version);
    return this.#write({ key, version: options.version }, options.signal, (request, call) => this.#transport.delete(request, call));
  }

  /**
   * Tries a write until it is answered: one fresh id on every try, every try after the first
   * marked a retry, and `ErrMaybe` once `retryLimitMs` passed with no answer.
   */
  async #write<Q, R extends { err: string }>(
    fields: Q,
    signal: AbortSignal | undefined,
    send: (request: Q & { id: string; retry?: boolean }, call: TransportCallOptions) => Promise<R>,
  ): Promise<R | { err: "ErrMaybe" }> {
    const request = { ...fields, id: randomUUID() };
    const retried = { ...request, retry: true };
    let tries = 0;
    let isAmbiguous = false;
    const result = await this.#retry(
      signal,
      (call) => send(tries++ === 0 ? request : retried, call),
      () => {
        isAmbiguous = true;
      },
      this.#clock.now() + this.#retryLimitMs,
    );
    if (result === GAVE_UP) return { err: "ErrMaybe" };
    // Without records a try that went unanswered may have applied, and the key moved on — or was
    // deleted — since.
    if (isAmbiguous && result.err !== "OK" && this.#transport.keepsCompletionRecords !== true) return { err: "ErrMaybe" };
    return result;
  }

  /** Ends the clerk's connections once calls in flight are done; later calls reject `ERR_KV_CLOSED`. Idempotent. */
  close(): Promise<void> {
    if (this.#closed === undefined) {
      this.#closing.abort();
      this.#closed = this.#transport.close();
    }
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Tries a read until it answers. */
  #retryUntilAnswered<R>(signal: AbortSignal | undefined, attempt: (call: TransportCallOptions) => Promise<R>): Promise<R> {
    return this.#retry(signal, attempt) as Promise<R>; // no deadline: never GAVE_UP
  }

  /**
   * Tries `attempt` until it answers. With `deadline` (a write's retry limit), once a try went
   * unanswered no try starts after it: it answers {@link GAVE_UP} instead.
   */
  async #retry<R>(
    signal: AbortSignal | undefined,
    attempt: (call: TransportCallOptions) => Promise<R>,
    onNoReply?: () => void,
    deadline?: number,
  ): Promise<R | typeof GAVE_UP> {
    let hadNoReply = false;
    // The transport keeps each try's deadline: an AbortSignal per try costs undici a quarter of
    // its throughput, so one goes down only when the caller gave one.
    const call: TransportCallOptions = { signal, timeoutMs: this.#attemptTimeoutMs };
    for (let n = 0; ; n++) {
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      if (this.#closed !== undefined) throw new KvError("ERR_KV_CLOSED", "the clerk is closed");
      let waitMs: number;
      try {
        return await attempt(call);
      } catch (err) {
        if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
        if (hasCode(err, "ERR_KV_NO_REPLY")) {
          hadNoReply = true;
          onNoReply?.();
          waitMs = backoffMs(n, this.#baseMs, this.#maxMs);
        } else if (hasCode(err, "ERR_KV_UNAVAILABLE")) {
          // Refused before it was applied: retrying cannot make the outcome ambiguous.
          const retryAfterMs = Math.min((err as UnavailableError).retryAfterMs ?? 0, MAX_RETRY_AFTER_MS);
          waitMs = Math.max(retryAfterMs, backoffMs(n, this.#baseMs, this.#maxMs));
        } else {
          throw err;
        }
        if (retryChannel.hasSubscribers) retryChannel.publish({ attempt: n, waitMs, error: err });
        // Past a write's retry limit, an unanswered try makes it ErrMaybe; refusals alone (503,
        // 429: not applied) are retried on, as a read is.
        if (deadline !== undefined && hadNoReply && this.#clock.now() + waitMs > deadline) return GAVE_UP;
      }
      await this.#pause(waitMs, signal);
    }
  }

  /** Sleeps `ms` unless the caller aborts (`AbortError`) or the clerk closes (`ERR_KV_CLOSED`). */
  async #pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
    // Only on a retry, never on the hot path: one controller that either event aborts.
    const wake = new AbortController();
    const abort = () => wake.abort();
    signal?.addEventListener("abort", abort, { once: true });
    this.#closing.signal.addEventListener("abort", abort, { once: true });
    try {
      await this.#clock.sleep(ms, wake.signal);
    } catch {
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      throw new KvError("ERR_KV_CLOSED", "the clerk is closed");
    } finally {
      signal?.removeEventListener("abort", abort);
      this.#closing.signal.removeEventListener("abort", abort);
    }
  }
}

/**
 * A Clerk over HTTP to `options.endpoints`. Throws `InvalidArgumentError` for an empty or
 * malformed endpoint list.
 */
export function createClerk(options: ClerkOptions): Clerk {
  const { endpoints } = options;
  if (!Array.isArray(endpoints) || endpoints.length === 0) {
    throw new InvalidArgumentError("endpoints must be a non-empty array of http(s) URLs");
  }
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/]+\/?$/.test(e))
      throw new InvalidArgumentError(`endpoint must be an http(s) URL with no path, got ${JSON.stringify(e)}`);
  }
  const { token } = options;
  // RFC 6750's token characters: anything else could not travel in a header.
  if (token !== undefined && !(typeof token === "string" && /^[\x21-\x7e]+$/.test(token))) {
    throw new InvalidArgumentError("token must be a non-empty string of visible ASCII characters");
  }
  const transport = new HttpTransport({
    endpoints,
    token,
    tls: options.tls,
    connectTimeoutMs: options.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS,
  });
  const retry: RetryOptions = {};
  if (options.attemptTimeoutMs !== undefined) retry.attemptTimeoutMs = options.attemptTimeoutMs;
  if (options.backoff !== undefined) retry.backoff = options.backoff;
  if (options.retryLimitMs !== undefined) retry.retryLimitMs = options.retryLimitMs;
  return new Clerk(transport, retry);
}

function positive(name: string, n: number): number {
  if (!(typeof n === "number" && n > 0 && Number.isFinite(n)))
    throw new InvalidArgumentError(`${name} must be a positive number, got ${String(n)}`);
  return n;
}
