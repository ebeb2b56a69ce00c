import type { Clerk, Clock } from "@kv/clerk";

/** A hold's signal's reason when its lease ended: not renewed in time, or taken over. */
export class LeaseLostError extends Error {
  readonly code = "ERR_LOCK_LEASE_LOST";
  override name = "LeaseLostError";
}

// A holder gives its lease up at 90 % of ttlMs on its own clock: safe while no waiter's clock
// runs more than 10 % faster than the holder's (see the README's argument).
const LEASE_SHARE = 0.9;

/** The id of a holder with a lease of `ttlMs`: waiters read the lease from it. */
export const withLease = (id: string, ttlMs: number): string => `${id};ttl=${ttlMs}`;

/** The lease of the holder whose id is `value`, or undefined: held until released. */
function leaseOf(value: string): number | undefined {
  const match = /;ttl=(\d{1,15})$/.exec(value);
  return match === null ? undefined : Number(match[1]);
}

/**
 * A waiter's count of how long another's hold has gone unrenewed: every renewal moves the key
 * to a new version, so a key seen at one version for the holder's ttlMs (on the waiter's clock)
 * is a lease that ran out.
 */
export class TakeoverTimer {
  readonly #clock: Clock;
  #version = -1;
  #since = 0;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** The key has been at `version` since now. */
  restart(version: number): void {
    this.#version = version;
    this.#since = this.#clock.now();
  }

  /**
   * How long until the holder of `seen` may be taken over; negative once it may, `Infinity`
   * for a holder without a lease.
   */
  msLeft(seen: { version: number; value: string }): number {
    if (seen.version !== this.#version) this.restart(seen.version);
    const ttlMs = leaseOf(seen.value);
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : ttlMs - (this.#clock.now() - this.#since);
  }
}

export interface LeaseOptions {
  clerk: Clerk;
  key: string;
  /** The holder's id, as written into the key. */
  id: string;
  ttlMs: number;
  clock: Clock;
  /** The hold: the key's version as the holder last wrote it, which renewals read and move on. */
  held: { version: number };
  /** When the put that began the hold was sent (on `clock`). */
  startedAt: number;
  /** Called once when the lease is lost: not renewed in time, or taken over. */
  onLost: (reason: LeaseLostError) => void;
}

/**
 * A holder's lease: every ttlMs/3 it re-puts the holder's id at the version it wrote last, and
 * each OK proves the lease for 90 % of ttlMs from when that put was sent. Once not proven, it
 * is lost — before any waiter, counting a full ttlMs, may take the key over.
 */
export class Lease {
  readonly #options: LeaseOptions;
  readonly #ended = new AbortController();
  #renewing = new AbortController();
  /** On the holder's clock: the lease is not proven past this. */
  #expiresAt: number;

  constructor(options: LeaseOptions) {
    this.#options = options;
    this.#expiresAt = options.startedAt + options.ttlMs * LEASE_SHARE;
    this.resume();
    void this.#expireUnlessRenewed();
  }

  /** Another put of the holder's id, sent at `startedAt`, answered OK. */
  extend(startedAt: number): void {
    this.#expiresAt = Math.max(this.#expiresAt, startedAt + this.#options.ttlMs * LEASE_SHARE);
  }

  /** Stops renewing, as a release begins; a renewal in flight may still land. */
  pause(): void {
    this.#renewing.abort();
  }

  /** Renews again: a release that failed leaves the hold in place. */
  resume(): void {
    const renewing = new AbortController();
    this.#renewing.abort();
    this.#renewing = renewing;
    this.#renew(renewing.signal).catch((err: unknown) => {
      if (!renewing.signal.aborted) this.#lose(new LeaseLostError("the lease could not be renewed", { cause: err }));
    });
  }

  /** The hold ended: renew no more. */
  end(): void {
    this.#renewing.abort();
    this.#ended.abort();
  }

  #lose(reason: LeaseLostError): void {
    if (this.#ended.signal.aborted) return;
    this.end();
    this.#options.onLost(reason);
  }

  async #expireUnlessRenewed(): Promise<void> {
    const { clock, key, ttlMs } = this.#options;
    while (!this.#ended.signal.aborted) {
      const left = this.#expiresAt - clock.now();
      if (left <= 0) return this.#lose(new LeaseLostError(`the lease on ${JSON.stringify(key)} was not renewed within ${ttlMs} ms`));
      try {
        await clock.sleep(left, this.#ended.signal);
      } catch {
        return; // the hold ended otherwise
      }
    }
  }

  async #renew(signal: AbortSignal): Promise<void> {
    const { clerk, key, id, ttlMs, clock, held } = this.#options;
    let isDue = false;
    while (!signal.aborted) {
      if (!isDue) await clock.sleep(ttlMs / 3, signal);
      isDue = false;
      const startedAt = clock.now();
      const r = await clerk.put(key, id, held.version, { signal });
      if (signal.aborted) return;
      if (r.err === "OK") {
        held.version = r.version;
        this.extend(startedAt);
        continue;
      }
      // ErrVersion too: another acquire of this holder's Lock may have moved the key on.
      if (r.err === "ErrMaybe" || r.err === "ErrVersion") {
        const seen = await clerk.get(key, { signal });
        if (seen.err === "OK" && seen.value === id) {
          // Ours, at a version we may not know of: renew again at once, at the version seen.
          held.version = seen.version;
          isDue = true;
          continue;
        }
      }
      return this.#lose(new LeaseLostError(`the lock ${JSON.stringify(key)} was taken over`));
    }
  }
}
