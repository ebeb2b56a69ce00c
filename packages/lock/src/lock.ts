import { randomUUID } from "node:crypto";
import { AbortError, backoffMs, type Clerk, type Clock, type GetResult, InvalidArgumentError, systemClock } from "@kv/clerk";
import { Lease, LeaseLostError, TakeoverTimer, withLease } from "./lease";

/** The value of a lock key nobody holds. */
export const UNLOCKED = "__unlocked";

export interface LockOptions {
  /**
   * Lease: unset, the lock is held until released. Set, the holder renews it every `ttlMs / 3`,
   * and a waiter takes it over once it has seen the same version of the held key for `ttlMs`
   * (the holder's, read from its id: Locks on one key may use different leases, or none).
   */
  ttlMs?: number;
  /** Time to wait by (default: real time). Tests pass a simulated clock. */
  clock?: Clock;
}

/** A hold on the lock, from `acquire` until `release` or a lease lost. */
export interface Hold {
  /**
   * Fencing token: the store revision of the write that began this hold (the lock key's
   * `modRevision` then). Strictly greater than every earlier holder's token — also across a
   * delete and re-create of the key, which would start its version again — so a resource that
   * remembers the largest token it has seen can refuse a stale holder.
   */
  readonly token: number;
  /** Aborts when this hold ends: `release`, or a lease that could not be renewed in time (reason: {@link LeaseLostError}). */
  readonly signal: AbortSignal;
}

/** `release` of a lock this Lock does not hold. */
export class LockNotHeldError extends Error {
  readonly code = "ERR_LOCK_NOT_HELD";
  override name = "LockNotHeldError";
}

// A waiter's long-poll is this long at most: a wake-up lost on the network costs no more.
const MAX_WAIT_MS = 10_000;
// Waiting when the server answers a long-poll early: full jitter, from a few ms to a second.
const BACKOFF_BASE_MS = 5;
const BACKOFF_MAX_MS = 1_000;

interface HoldState {
  readonly token: number;
  /** The key's version as this holder last wrote it. */
  version: number;
  readonly ended: AbortController;
  /** With `ttlMs`: renews the hold, and ends it when not renewed in time. */
  lease: Lease | undefined;
}

type Seen = Extract<GetResult, { err: "OK" }>;

/** What one try to acquire came to: a hold, or the key as it now stands. */
type TryOutcome = { hold: Hold } | { seen: Seen };

/**
 * A lock on one kv key (contract §3), by test-and-set: the key holds `__unlocked` or the
 * holder's id, and every change is a conditional put. Waiters wait on the server (long-poll).
 * With a lease (`ttlMs`), a holder that stops renewing loses the key to a waiter; no clock
 * synchronisation is assumed, only clocks that run at about the same rate.
 */
export class Lock {
  /**
   * This Lock's identity, written into the key while it holds it. With a lease it ends in
   * `;ttl=<ttlMs>`: waiters take the holder's lease from the key, never their own.
   */
  readonly id: string;
  readonly #clerk: Clerk;
  readonly #key: string;
  readonly #clock: Clock;
  readonly #ttlMs: number | undefined;
  #hold: HoldState | undefined;

  constructor(clerk: Clerk, key: string, options: LockOptions = {}) {
    const { ttlMs } = options;
    if (ttlMs !== undefined && (!Number.isSafeInteger(ttlMs) || ttlMs < 3)) {
      throw new InvalidArgumentError(`ttlMs must be an integer ≥ 3, got ${String(ttlMs)}`);
    }
    this.#clerk = clerk;
    this.#key = key;
    this.#clock = options.clock ?? systemClock;
    this.#ttlMs = ttlMs;
    this.id = ttlMs === undefined ? randomUUID() : withLease(randomUUID(), ttlMs);
  }

  /**
   * Resolves with a {@link Hold} once this Lock holds the key; at once when it already does.
   * While another holds it, waits on the server for the key to change (and, with a lease, takes
   * it over once it has not changed for `ttlMs`). Rejects `AbortError` when `signal` aborts, and
   * as the clerk rejects (`KvError`) on a permanent failure.
   */
  async acquire(options: { signal?: AbortSignal } = {}): Promise<Hold> {
    const { signal } = options;
    if (this.#hold !== undefined) return holdOf(this.#hold);
    const takeover = new TakeoverTimer(this.#clock);
    let earlyAnswers = 0;
    let seen = await this.#read(signal);
    while (true) {
      if (this.#hold !== undefined) return holdOf(this.#hold);
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      const isHeldByAnother = seen.value !== this.id && seen.value !== UNLOCKED;
      // Free, ours, or held on a lease that went unrenewed for its ttlMs (its holder's signal
      // has aborted): try to take it.
      const msLeft = isHeldByAnother ? takeover.msLeft(seen) : -1;
      if (msLeft < 0) {
        const outcome = await this.#tryAcquire(seen, takeover, signal);
        if ("hold" in outcome) return outcome.hold;
        seen = outcome.seen;
      } else {
        const waitMs = Math.min(MAX_WAIT_MS, Math.ceil(msLeft) + 1);
        const askedAt = this.#clock.now();
        const next = await this.#read(signal, { waitVersion: seen.version, waitMs });
        // Unchanged before the wait was over: a server that does not wait (or is shutting
        // down). Back off rather than ask again at once.
        if (next.version === seen.version && this.#clock.now() - askedAt < waitMs) await this.#backOff(earlyAnswers++, signal);
        else earlyAnswers = 0;
        seen = next;
      }
    }
  }

  /**
   * Gives the lock up: swaps the key back to `__unlocked`, and ends the hold (its signal
   * aborts). A Lock holds the key whenever the key holds its id, so this also gives up a hold
   * that an aborted `acquire`, or a renewal landing after its lease was lost, left behind.
   * Rejects `LockNotHeldError` (`ERR_LOCK_NOT_HELD`), changing nothing, when the key does not
   * hold this Lock's id; rejects as the clerk rejects (`KvError`) on a permanent failure, and
   * then the hold goes on.
   */
  async release(): Promise<void> {
    const hold = this.#hold;
    hold?.lease?.pause(); // a renewal in flight may still land: the loop below sees it
    let isOurs = hold !== undefined;
    try {
      // The holder knows the version it wrote last: one put, no read, unless it moved on.
      if (hold !== undefined && (await this.#clerk.put(this.#key, UNLOCKED, hold.version)).err === "OK")
        return this.#end(hold, new LockNotHeldError("the hold ended"));
      while (true) {
        const seen = await this.#clerk.get(this.#key);
        if (seen.err !== "OK" || seen.value !== this.id) {
          if (!isOurs) throw new LockNotHeldError(`lock ${JSON.stringify(this.#key)} is not held by ${this.id}`);
          // Not ours any more: a try of ours whose reply was lost released it (only the holder
          // writes the key), or a waiter took an expired lease over.
          break;
        }
        isOurs = true;
        const r = await this.#clerk.put(this.#key, UNLOCKED, seen.version);
        if (r.err === "OK") break;
        // ErrVersion, ErrMaybe: read again to learn where the key stands.
      }
    } catch (err) {
      if (hold !== undefined && this.#hold === hold) hold.lease?.resume();
      throw err;
    }
    if (hold !== undefined) this.#end(hold, new LockNotHeldError("the hold ended"));
  }

  /**
   * One conditional put of this Lock's id at the version `seen`. A lease starts only at a put
   * of ours that answered OK: nobody saw the key at that version before the put was sent.
   */
  async #tryAcquire(seen: Seen, takeover: TakeoverTimer, signal: AbortSignal | undefined): Promise<TryOutcome> {
    // Ours from a try whose reply was lost; without a lease there is nothing to start.
    if (seen.value === this.id && this.#ttlMs === undefined) return { hold: this.#begin(seen.version, seen.modRevision, 0) };
    const startedAt = this.#clock.now();
    const r = await this.#clerk.put(this.#key, this.id, seen.version, signal === undefined ? {} : { signal });
    switch (r.err) {
      case "OK":
        return { hold: this.#begin(r.version, r.revision, startedAt) };
      case "ErrVersion": {
        // Someone moved first — most often another waiter, to the next version. Wait on that
        // version at once instead of reading first: one request fewer per loser per handoff.
        // It was there before this answer came, so a lease may be counted from now.
        const next = seen.version + 1;
        takeover.restart(next);
        const waitMs = Math.min(MAX_WAIT_MS, (this.#ttlMs ?? MAX_WAIT_MS) + 1);
        return { seen: await this.#read(signal, { waitVersion: next, waitMs }) };
      }
      case "ErrNoKey": // deleted since it was read: #read creates it again
      case "ErrMaybe": // ours may have landed: look
        return { seen: await this.#read(signal) };
      default:
        return r satisfies never;
    }
  }

  async #backOff(attempt: number, signal: AbortSignal | undefined): Promise<void> {
    try {
      await this.#clock.sleep(backoffMs(attempt, BACKOFF_BASE_MS, BACKOFF_MAX_MS), signal);
    } catch {
      throw new AbortError(undefined, { cause: signal?.reason });
    }
  }

  /** The key as it is now (with `wait`, once it changed or the wait is over), created `__unlocked` if absent. */
  async #read(signal: AbortSignal | undefined, wait?: { waitVersion: number; waitMs: number }): Promise<Seen> {
    while (true) {
      const seen = await this.#clerk.get(this.#key, { ...wait, ...(signal === undefined ? {} : { signal }) });
      if (seen.err === "OK") return seen;
      // First use: create it. ErrVersion or ErrMaybe mean it exists now (or may): read again.
      await this.#clerk.put(this.#key, UNLOCKED, 0, signal === undefined ? {} : { signal });
      wait = undefined;
    }
  }

  #begin(version: number, token: number, startedAt: number): Hold {
    const current = this.#hold;
    if (current !== undefined) {
      // Two acquires of one Lock share a hold; the later put moved the key on.
      current.version = Math.max(current.version, version);
      current.lease?.extend(startedAt);
      return holdOf(current);
    }
    const hold: HoldState = { token, version, ended: new AbortController(), lease: undefined };
    this.#hold = hold;
    if (this.#ttlMs !== undefined) {
      hold.lease = new Lease({
        clerk: this.#clerk,
        key: this.#key,
        id: this.id,
        ttlMs: this.#ttlMs,
        clock: this.#clock,
        held: hold,
        startedAt,
        onLost: (reason) => this.#end(hold, reason),
      });
    }
    return holdOf(hold);
  }

  #end(hold: HoldState, reason: Error): void {
    if (this.#hold === hold) this.#hold = undefined;
    hold.lease?.end();
    hold.ended.abort(reason);
  }
}

function holdOf(hold: HoldState): Hold {
  return { token: hold.token, signal: hold.ended.signal };
}

/** A lock on `key` through `clerk`. */
export function createLock(clerk: Clerk, key: string, options?: LockOptions): Lock {
  return new Lock(clerk, key, options);
}
