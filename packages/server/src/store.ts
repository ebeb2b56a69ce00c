import { KvError } from "@kv/rpc";
import type { DeleteDecision, PutDecision } from "./completion-records";

/**
 * What a store keeps per key: the value, its version, the store revisions of the write that made
 * this version and of the one that created the key, and the id of the put that wrote it.
 */
export interface StoredEntry {
  readonly value: string;
  readonly version: number;
  readonly modRevision: number;
  readonly createRevision: number;
  readonly putId?: string | undefined;
}

/**
 * The outcome of {@link Store.putIfVersion}: applied now, refused now (with the entry that
 * refused it), or decided before under the same id (its completion record's decision; nothing
 * changed now).
 */
export type PutIfVersionResult =
  | { readonly ok: true; readonly version: number; readonly revision: number }
  | { readonly ok: false; readonly current: StoredEntry | undefined }
  | { readonly ok?: undefined; readonly recorded: PutDecision };

/** The outcome of {@link Store.deleteIfVersion}, as {@link PutIfVersionResult}'s. */
export type DeleteIfVersionResult =
  | { readonly ok: true; readonly revision: number }
  | { readonly ok: false; readonly current: StoredEntry | undefined }
  | { readonly ok?: undefined; readonly recorded: DeleteDecision };

/** What a write tells the store besides what it writes. */
export interface PutOptions {
  /** A try after the first of the same write (contract §2): its refusal is recorded, so no earlier try applies later. */
  readonly isRetry?: boolean | undefined;
}

/**
 * Where KVServer keeps its data. Every method is atomic on its own; `putIfVersion` is the one
 * primitive a backend must make atomic (an LMDB conditional write, an etcd transaction), so the
 * server needs no lock of its own around it.
 */
export interface Store {
  /** The key's entry, or `undefined` when the key was never written. */
  get(key: string): Promise<StoredEntry | undefined>;
  /**
   * Atomically: when the key's version equals `expectedVersion` (0: the key is absent), store
   * `value` at version `expectedVersion + 1` together with `putId`, raise the store revision,
   * and resolve `{ ok: true, version, revision }` — the new revision, which is the entry's
   * `modRevision` (and its `createRevision` when it created the key). Otherwise change nothing and resolve `{ ok: false, current }` with
   * the entry as it was at that same moment (`undefined`: absent).
   *
   * A store that keeps completion records (contract §2; {@link completionRecords} says so)
   * decides each `putId` once: a put whose id has a record resolves `{ recorded }` and changes
   * nothing; one that applies writes its record in the same atomic step; one refused with
   * `options.isRetry` records the refusal ({@link refusalOf}) in that step too. It rejects
   * `InvalidArgumentError` for an id recorded for another write, and `StoreUnavailableError`
   * (nothing applied) when a new record is needed and `maxIds` are kept.
   * Rejects `KvError` `ERR_KV_CLOSED` after `close()`.
   */
  putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options?: PutOptions,
  ): Promise<PutIfVersionResult>;
  /**
   * Atomically: when the key is present — and, given `expectedVersion`, at that version — remove
   * it, raise the store revision, and resolve `{ ok: true, revision }`. Otherwise change nothing
   * and resolve `{ ok: false, current }` with the entry as it was at that moment. A later put at
   * version 0 creates the key again at version 1. Completion records as for `putIfVersion`, of
   * kind `delete` (an unconditional delete names `ANY_VERSION`).
   */
  deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    deleteId: string | undefined,
    options?: PutOptions,
  ): Promise<DeleteIfVersionResult>;
  /** How many completion records the store keeps now (on a shared store, every server's); absent on a store that keeps none. */
  completionRecords?(): Promise<number>;
  /**
   * Calls `onChange` after a write to `key` commits (it may also call it when nothing changed);
   * returns the function that stops it. What long-poll reads wait on: a write through any server
   * sharing the store must wake the waiters of every one. A store without it is polled.
   */
  watch?(key: string, onChange: () => void): () => void;
  /**
   * Whether the store can serve now (the app's `/readyz`); a store that is always ready when
   * open may leave it out. Never rejects.
   */
  isReady?(): Promise<boolean>;
  /** Lets calls in flight finish, then releases the store; idempotent. */
  close(): Promise<void>;
}

/**
 * The store could not serve a call and did not apply it (its backend is unreachable, has no
 * quorum): the caller may retry without ambiguity. The app answers 503 `ErrUnavailable`.
 */
export class StoreUnavailableError extends KvError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_KV_UNAVAILABLE", message, options);
  }
}

/**
 * A put was sent to the store's backend, but whether it was applied is unknown (a timeout, a
 * lost connection). The app answers 504 `ErrMaybe`, which a clerk counts as a try with no reply.
 */
export class StoreOutcomeUnknownError extends KvError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_KV_OUTCOME_UNKNOWN", message, options);
  }
}

/** A store could not be opened (bad path or URL, not its format, held elsewhere); the message says why in one line. */
export class StoreOpenError extends KvError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_KV_STORE_OPEN", message, options);
  }
}
