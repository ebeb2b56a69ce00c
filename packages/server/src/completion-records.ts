import { InvalidArgumentError } from "@kv/rpc";
import { StoreUnavailableError, type StoredEntry } from "./store";

/** A put's one decision (contract §2): what every try of it is answered. */
export type PutDecision = { err: "OK"; version: number; revision: number } | { err: "ErrVersion" | "ErrNoKey" };

/** A delete's one decision. */
export type DeleteDecision = { err: "OK"; revision: number } | { err: "ErrVersion" | "ErrNoKey" };

/** The version an unconditional delete names in its record. */
export const ANY_VERSION = -1;

/** A write's completion record: what was decided for its id, and for which write. */
export type CompletionRecord = (
  | { readonly kind: "put"; readonly decision: PutDecision }
  | { readonly kind: "delete"; readonly decision: DeleteDecision }
) & {
  readonly key: string;
  /** The version the write named ({@link ANY_VERSION}: an unconditional delete). */
  readonly version: number;
  /** When it was recorded, on the store's clock (ms since the epoch). */
  readonly at: number;
};

/** How long completion records are kept, how many at most, and the clock they are kept by. */
export interface CompletionRecordOptions {
  /** At least this long (default 120 000 ms, `KV_ID_RETENTION_MS`). */
  retentionMs?: number;
  /** At most this many; past it a write that needs a new record is refused (default 1 000 000, `KV_MAX_IDS`). */
  maxIds?: number;
  /** The store's clock (default `Date.now`): wall time, so records written to disk keep their age across a restart. */
  now?: () => number;
  /**
   * Tests only: `false` keeps no record of a retry's refusal, to show the race such records
   * close (an earlier try applying after its retry was refused). Never in production.
   */
  recordRefusals?: boolean;
}

export const DEFAULT_ID_RETENTION_MS = 120_000;
export const DEFAULT_MAX_IDS = 1_000_000;
const SWEEP_INTERVAL_MS = 100;

/** A put that needs a new record when `maxIds` are kept: refused, not applied (503). */
export const recordsFull = (maxIds: number): StoreUnavailableError =>
  new StoreUnavailableError(`${maxIds} completion records are kept (KV_MAX_IDS): writes with an id wait for some to expire`);

/**
 * The decision for a put that found the key at another version (`current`, undefined: absent):
 * `ErrNoKey`, `ErrVersion` — or, without a record, the old rule: the put whose id made the
 * current version, naming the version just below, was applied (`OK`).
 */
export function refusalOf(current: StoredEntry | undefined, expectedVersion: number, putId: string | undefined): PutDecision {
  if (current === undefined) return { err: "ErrNoKey" };
  if (putId !== undefined && current.putId === putId && current.version === expectedVersion + 1) {
    return { err: "OK", version: current.version, revision: current.modRevision };
  }
  return { err: "ErrVersion" };
}

/**
 * The recorded decision for a try of the write `record` was made for; `InvalidArgumentError`
 * (400) when the id was recorded for another write: ids are never reused.
 */
export function replayOf(record: CompletionRecord, key: string, expectedVersion: number, putId: string): PutDecision {
  if (record.kind !== "put" || record.key !== key || record.version !== expectedVersion) throw reused(putId);
  return record.decision;
}

/** {@link replayOf} for a delete (`version`: {@link ANY_VERSION} when unconditional). */
export function replayDeleteOf(record: CompletionRecord, key: string, version: number, id: string): DeleteDecision {
  if (record.kind !== "delete" || record.key !== key || record.version !== version) throw reused(id);
  return record.decision;
}

const reused = (id: string) => new InvalidArgumentError(`id ${JSON.stringify(id)} was used for another write: ids are never reused`);

/** The decision for a delete that found the key absent or at another version than it named. */
export const deleteRefusalOf = (current: StoredEntry | undefined): DeleteDecision =>
  current === undefined ? { err: "ErrNoKey" } : { err: "ErrVersion" };

/**
 * Completion records in this process's memory, each kept for the retention and then dropped,
 * oldest first: a Map keeps insertion order, and records are made in time order, so expiry
 * walks from the front and stops at the first record still young.
 */
export class CompletionRecords {
  readonly retentionMs: number;
  readonly maxIds: number;
  readonly now: () => number;
  readonly recordRefusals: boolean;
  readonly #records = new Map<string, CompletionRecord>();
  #sweptAt = Number.NEGATIVE_INFINITY;

  constructor(options: CompletionRecordOptions = {}) {
    this.retentionMs = options.retentionMs ?? DEFAULT_ID_RETENTION_MS;
    this.maxIds = options.maxIds ?? DEFAULT_MAX_IDS;
    this.now = options.now ?? Date.now;
    this.recordRefusals = options.recordRefusals ?? true;
  }

  /** The record of `id` while it lasts. */
  get(id: string): CompletionRecord | undefined {
    const record = this.#records.get(id);
    if (record === undefined || this.#isExpired(record)) return undefined;
    return record;
  }

  /** Records `decision` for `id`; throws `StoreUnavailableError` when full (call {@link assertRoom} before a write). */
  add<K extends CompletionRecord["kind"]>(
    id: string,
    kind: K,
    key: string,
    version: number,
    decision: Extract<CompletionRecord, { kind: K }>["decision"],
  ): void {
    const now = this.now();
    // Swept now and then, not at each add: a record a little past its retention costs nothing.
    if (now - this.#sweptAt >= SWEEP_INTERVAL_MS) this.sweep();
    this.assertRoom();
    this.#records.delete(id); // an expired one, still held: the new one goes to the back
    this.#records.set(id, { kind, key, version, decision, at: now } as CompletionRecord);
  }

  /** Throws `StoreUnavailableError` unless one more record may be made (after dropping the expired). */
  assertRoom(): void {
    if (this.#records.size < this.maxIds) return;
    this.sweep();
    if (this.#records.size >= this.maxIds) {
      throw recordsFull(this.maxIds);
    }
  }

  /** Drops the records past their retention. */
  sweep(): void {
    this.#sweptAt = this.now();
    for (const [id, record] of this.#records) {
      if (!this.#isExpired(record)) return;
      this.#records.delete(id);
    }
  }

  /** How many records are kept. */
  get size(): number {
    this.sweep();
    return this.#records.size;
  }

  #isExpired(record: CompletionRecord): boolean {
    return this.now() - record.at >= this.retentionMs;
  }
}
