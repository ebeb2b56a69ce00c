import { randomUUID } from "node:crypto";
import { AbortError, type Clerk, type Clock, type GetResult, systemClock } from "@kv/clerk";

/** The value of a lock key nobody holds. */
export const UNLOCKED = "__unlocked";

export interface LockOptions {
  /** Time to wait by (default: real time). Tests pass a simulated clock. */
  clock?: Clock;
}

/** A hold on the lock, from `acquire` until `release`. */
export interface Hold {
  /**
   * Fencing token: the lock key's version when this hold began. Strictly greater than every
   * earlier holder's token, so a resource that remembers the largest token it has seen can
   * refuse a stale holder.
   */
  readonly token: number;
  /** Aborts when this hold ends. */
  readonly signal: AbortSignal;
}

/** `release` of a lock this Lock does not hold. */
export class LockNotHeldError extends Error {
  readonly code = "ERR_LOCK_NOT_HELD";
  override name = "LockNotHeldError";
}

// Waiting for a held lock: exponential from a few ms, capped so a release is noticed soon.
const WAIT_BASE_MS = 5;
const WAIT_MAX_MS = 250;

/**
 * A lock on one kv key (contract §3), by test-and-set: the key holds `__unlocked` or the
 * holder's id, and every change is a conditional put. Safe without synchronised clocks:
 * nothing here depends on time but the waiting.
 */
export class Lock {
  /** This Lock's identity, written into the key while it holds it. */
  readonly id: string = randomUUID();
  readonly #clerk: Clerk;
  readonly #key: string;
  readonly #clock: Clock;
  #hold: { token: number; controller: AbortController } | undefined;

  constructor(clerk: Clerk, key: string, options: LockOptions = {}) {
    this.#clerk = clerk;
    this.#key = key;
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Resolves with a {@link Hold} once this Lock holds the key; at once when it already does.
   * Waits with backoff while another holds it. Rejects `AbortError` when `signal` aborts, and
   * as the clerk rejects (`KvError`) on a permanent failure.
   */
  async acquire(options: { signal?: AbortSignal } = {}): Promise<Hold> {
    const { signal } = options;
    for (let attempt = 0; ; attempt++) {
      if (this.#hold !== undefined) return this.#holdOf(this.#hold);
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      const seen = await this.#read(signal);
      // An earlier ErrMaybe landed, or an aborted acquire of this Lock did.
      if (seen.value === this.id) return this.#begin(seen.version);
      if (seen.value === UNLOCKED) {
        const r = await this.#clerk.put(this.#key, this.id, seen.version, { signal });
        switch (r.err) {
          case "OK":
            return this.#begin(r.version);
          case "ErrVersion": // someone else moved first
          case "ErrNoKey": // unreachable: lock keys are never deleted
            break;
          case "ErrMaybe": {
            // Our try may have landed: only a fresh read can tell; the next round does it at once.
            continue;
          }
        }
      }
      try {
        await this.#clock.sleep(Math.random() * Math.min(WAIT_MAX_MS, WAIT_BASE_MS * 2 ** attempt), signal);
      } catch {
        throw new AbortError(undefined, { cause: signal?.reason });
      }
    }
  }

  /**
   * Gives the lock up: swaps the key back to `__unlocked`, and ends the hold (its signal
   * aborts). A Lock holds the key whenever the key holds its id, so this also gives up a hold
   * that an aborted `acquire` left behind. Rejects `LockNotHeldError` (`ERR_LOCK_NOT_HELD`),
   * changing nothing, when the key does not hold this Lock's id; rejects as the clerk rejects
   * (`KvError`) on a permanent failure, and then the hold goes on.
   */
  async release(): Promise<void> {
    let isOurs = this.#hold !== undefined;
    while (true) {
      const seen = await this.#clerk.get(this.#key);
      if (seen.err !== "OK" || seen.value !== this.id) {
        if (!isOurs) throw new LockNotHeldError(`lock ${JSON.stringify(this.#key)} is not held by ${this.id}`);
        // Not ours any more: a try of ours whose reply was lost released it (only the holder
        // writes the key), and others may have come and gone since.
        break;
      }
      isOurs = true;
      const r = await this.#clerk.put(this.#key, UNLOCKED, seen.version);
      if (r.err === "OK") break;
      // ErrVersion, ErrMaybe: read again to learn where the key stands.
    }
    const hold = this.#hold;
    this.#hold = undefined;
    hold?.controller.abort(new LockNotHeldError("the hold ended"));
  }

  /** The key as it is now, created `__unlocked` if it does not exist yet. */
  async #read(signal: AbortSignal | undefined): Promise<Extract<GetResult, { err: "OK" }>> {
    while (true) {
      const seen = await this.#clerk.get(this.#key, signal === undefined ? {} : { signal });
      if (seen.err === "OK") return seen;
      // First use: create it. ErrVersion or ErrMaybe mean it exists now (or may): read again.
      await this.#clerk.put(this.#key, UNLOCKED, 0, signal === undefined ? {} : { signal });
    }
  }

  #begin(token: number): Hold {
    this.#hold ??= { token, controller: new AbortController() }; // two acquires of one Lock share a hold
    return this.#holdOf(this.#hold);
  }

  #holdOf(hold: { token: number; controller: AbortController }): Hold {
    return { token: hold.token, signal: hold.controller.signal };
  }
}

/** A lock on `key` through `clerk`. */
export function createLock(clerk: Clerk, key: string, options?: LockOptions): Lock {
  return new Lock(clerk, key, options);
}
