import { checkKey, checkPutId, checkValue, checkVersion, checkWait, type GetResult, MAX_VERSION, type WaitOptions } from "@kv/rpc";
import { deleteRefusalOf, refusalOf } from "./completion-records";
import type { Store } from "./store";

// A store that cannot say when a key changes is read again this often while someone waits.
const POLL_INTERVAL_MS = 50;

/** A put's answer from the server itself: never `ErrMaybe`, which only a clerk can conclude. */
export type ServerPutResult = { err: "OK"; version: number; revision: number } | { err: "ErrVersion" | "ErrNoKey" };

/** A delete's answer from the server itself. */
export type ServerDeleteResult = { err: "OK"; revision: number } | { err: "ErrVersion" | "ErrNoKey" };

/**
 * The versioned key/value service of contract §2 over a {@link Store}. It keeps no state of its
 * own — in particular none per client — so any number of KVServers may share one store.
 */
export class KVServer {
  readonly #store: Store;
  readonly #sharedReads = new Map<string, { seq: number; result: Promise<GetResult> }>();
  #sharedReadSeq = 0;

  constructor(store: Store) {
    this.#store = store;
  }

  /** Whether its store keeps completion records (contract §2), which make every put's first reply final. */
  get keepsCompletionRecords(): boolean {
    return this.#store.completionRecords !== undefined;
  }

  /**
   * The key's value and version, or `ErrNoKey`. With `wait`, a long-poll: answered as soon as
   * the key's version differs from `wait.version` (0: once the key exists) — at once if it
   * already does — or after `wait.ms`, or when `signal` aborts, with the state then.
   * Rejects `InvalidArgumentError` for a key that is not a non-empty string, or a bad wait.
   */
  async get(key: string, options: { wait?: WaitOptions | undefined; signal?: AbortSignal | undefined } = {}): Promise<GetResult> {
    checkKey(key);
    const { wait, signal } = options;
    if (wait === undefined) return this.#read(key);
    checkWait(wait.version, wait.ms);
    return this.#waitForChange(key, wait, signal);
  }

  async #read(key: string): Promise<GetResult> {
    const entry = await this.#store.get(key);
    if (entry === undefined) return { err: "ErrNoKey" };
    const { value, version, modRevision, createRevision } = entry;
    return { err: "OK", value, version, modRevision, createRevision };
  }

  /**
   * One store read for every waiter on `key` woken by the same write: a read started after
   * `startedAfter` (a count of shared reads) is as fresh as each of them needs.
   */
  #readShared(key: string, startedAfter: number): Promise<GetResult> {
    const current = this.#sharedReads.get(key);
    if (current !== undefined && current.seq > startedAfter) return current.result;
    const shared = { seq: ++this.#sharedReadSeq, result: this.#read(key) };
    this.#sharedReads.set(key, shared);
    const forget = () => {
      if (this.#sharedReads.get(key) === shared) this.#sharedReads.delete(key);
    };
    shared.result.then(forget, forget);
    return shared.result;
  }

  async #waitForChange(key: string, wait: WaitOptions, signal: AbortSignal | undefined): Promise<GetResult> {
    // Subscribed before the first read: a write between the read and the wait still wakes it.
    let wake = () => {};
    let wokenAt = this.#sharedReadSeq;
    const woken = () => {
      wokenAt = this.#sharedReadSeq;
      wake();
    };
    const unwatch = this.#store.watch?.(key, woken) ?? (() => {});
    const poll = this.#store.watch === undefined ? setInterval(woken, POLL_INTERVAL_MS) : undefined;
    let isOver = false;
    const timer = setTimeout(() => {
      isOver = true;
      woken();
    }, wait.ms);
    signal?.addEventListener("abort", woken);
    try {
      while (true) {
        const next = new Promise<void>((resolve) => (wake = resolve));
        const current = await this.#readShared(key, wokenAt);
        const version = current.err === "OK" ? current.version : 0;
        if (version !== wait.version || isOver || signal?.aborted) return current;
        await next;
      }
    } finally {
      unwatch();
      clearInterval(poll);
      clearTimeout(timer);
      signal?.removeEventListener("abort", woken);
    }
  }

  /**
   * Writes `value` when `version` is the key's current version (0: the key is absent) and
   * answers the new version; otherwise `ErrVersion` (the key exists) or `ErrNoKey`.
   * A put with an `id` is decided once (contract §2): on a store that keeps completion records,
   * every try of it is answered the first decision, whatever came in between; `isRetry` marks a
   * try after the first, whose refusal is recorded too. Without a record, a put whose `id` made
   * the key's current version, and whose `version` is one less, is a retry of that put: it is
   * answered `OK` with the current version and changes nothing.
   * Rejects `InvalidArgumentError` for a bad key, value, version or id (values and ids must be
   * well-formed Unicode), or an id recorded for another write.
   */
  async put(key: string, value: string, version: number, id?: string, options: { isRetry?: boolean } = {}): Promise<ServerPutResult> {
    checkKey(key);
    checkValue(value);
    checkVersion(version);
    if (id !== undefined) checkPutId(id);
    if (version === MAX_VERSION) {
      // A key at the largest version is full: the next version would not be a safe integer.
      return (await this.#store.get(key)) === undefined ? { err: "ErrNoKey" } : { err: "ErrVersion" };
    }
    const r = await this.#store.putIfVersion(key, value, version, id, options);
    if ("recorded" in r) return r.recorded;
    if (r.ok) return { err: "OK", version: r.version, revision: r.revision };
    return refusalOf(r.current, version, id);
  }

  /**
   * Removes the key — given `version`, only when it is at that version — and answers the store
   * revision of the delete; otherwise `ErrNoKey` (absent) or `ErrVersion`. An `id` makes it
   * decided once, as a put's. Rejects `InvalidArgumentError` for a bad key, version or id, or
   * an id recorded for another write.
   */
  async delete(key: string, version?: number, id?: string, options: { isRetry?: boolean } = {}): Promise<ServerDeleteResult> {
    checkKey(key);
    if (version !== undefined) checkVersion(version);
    if (id !== undefined) checkPutId(id);
    const r = await this.#store.deleteIfVersion(key, version, id, options);
    if ("recorded" in r) return r.recorded;
    if (r.ok) return { err: "OK", revision: r.revision };
    return deleteRefusalOf(r.current);
  }
}
