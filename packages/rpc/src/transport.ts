import type { DeleteResult, GetResult, PutResult } from "./err";

export interface PutRequest {
  key: string;
  value: string;
  version: number;
  /** The put id (contract §2): the same on every retry of one put. */
  id?: string;
  /** A try after the first of the same put (contract §2). */
  retry?: boolean;
}

export interface DeleteRequest {
  key: string;
  /** Delete only at this version; absent: whatever version the key is at. */
  version?: number | undefined;
  /** The delete's id (contract §2): the same on every retry of one delete. */
  id?: string;
  /** A try after the first of the same delete. */
  retry?: boolean;
}

export interface TransportCallOptions {
  /** The caller's signal: when it aborts, the try rejects with its reason. */
  signal?: AbortSignal | undefined;
  /** This try's deadline: with no reply by then, it rejects `NetworkError`. */
  timeoutMs?: number | undefined;
}

/** A long-poll read: answered once the key's version differs from `version` (0: once it exists), or after `ms`. */
export interface WaitOptions {
  version: number;
  ms: number;
}

/**
 * One try of one call to a kv server. A Transport never retries: the Clerk above it owns
 * retries, because only it knows when an outcome became ambiguous.
 */
export interface Transport {
  /**
   * Whether the server keeps completion records (contract §2): then a put's first reply is its
   * one true answer, even after a try went unanswered. Unset: the lab's rule (a later
   * `ErrVersion` may hide an applied try).
   */
  readonly keepsCompletionRecords?: boolean;
  /** The server's answer — with `wait`, once the key changed or the wait is over; rejects `NetworkError` when no reply came. */
  get(key: string, options?: TransportCallOptions & { wait?: WaitOptions | undefined }): Promise<GetResult>;
  /**
   * The server's answer (`OK`, `ErrNoKey` or `ErrVersion`); rejects `NetworkError` when no
   * reply came, so the put may or may not have been applied.
   */
  put(request: PutRequest, options?: TransportCallOptions): Promise<PutResult>;
  /** The server's answer (`OK`, `ErrNoKey` or `ErrVersion`); rejects `NetworkError` when no reply came. */
  delete(request: DeleteRequest, options?: TransportCallOptions): Promise<DeleteResult>;
  /** Ends the transport's connections; idempotent. */
  close(): Promise<void>;
}
