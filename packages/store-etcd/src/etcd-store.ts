import { hasCode, KvError } from "@kv/rpc";
import {
  ANY_VERSION,
  type CompletionRecord,
  type CompletionRecordOptions,
  DEFAULT_ID_RETENTION_MS,
  DEFAULT_MAX_IDS,
  type DeleteDecision,
  type DeleteIfVersionResult,
  deleteRefusalOf,
  KeyWatchers,
  type PutDecision,
  recordsFull,
  type PutIfVersionResult,
  type PutOptions,
  refusalOf,
  replayDeleteOf,
  replayOf,
  type Store,
  type StoredEntry,
  StoreOpenError,
  StoreOutcomeUnknownError,
  StoreUnavailableError,
} from "@kv/server";
import { ConsecutiveBreaker, circuitBreaker, handleWhen, isBrokenCircuitError, noop } from "cockatiel";
import { Etcd3, type IKeyValue, isRecoverableError, type Namespace, type Watcher } from "etcd3";

/** `openEtcdStore`'s options; besides where etcd is, how long completion records are kept and how many at most. */
export interface EtcdStoreOptions extends Omit<CompletionRecordOptions, "now"> {
  /** etcd client URLs, e.g. `["http://10.0.0.1:2379", "http://10.0.0.2:2379"]`. */
  endpoints: readonly string[];
  /** kv's keys live under this prefix in etcd (default `"kv/"`), so one cluster can serve several kvs. */
  prefix?: string;
  /** One call to etcd; longer counts as failed (default 1 500 ms). */
  callTimeoutMs?: number;
}

const DEFAULT_PREFIX = "kv/";
// Longer than etcd's leader election with its default 1 s election timeout: a call that waits
// out an election succeeds; one that cannot, fails while the clerk's try (5 s) still waits.
const DEFAULT_CALL_TIMEOUT_MS = 1_500;
// Tries of one store call, each to a member picked at random. A member that failed twice in a
// row is skipped (its circuit opens), so with one member of three dead a call still gets through.
const MAX_TRIES = 4;
const FAILURES_TO_SKIP_A_MEMBER = 2;
const RETRY_PAUSE_MS = 50;
const BREAKER_OPEN_MS = 1_000;
// Completion records are etcd keys under the prefix: 0xFF + the id. kv's keys are UTF-8, which
// never holds the byte 0xFF, so the two never meet. Each is attached to a lease that etcd expires:
// a lease is used for new records while younger than a quarter of the retention, and lives the
// retention past that (and a call's timeout more: a record may commit that much after its lease
// was picked), so every record lasts at least the retention.
const RECORD_MARK = 0xff;
const LEASE_ROTATIONS_PER_RETENTION = 4;
// How stale the record count may be when a write checks it against maxIds.
const RECORD_COUNT_MAX_AGE_MS = 1_000;

/**
 * A {@link Store} on an etcd v3 cluster. A kv version is etcd's per-key `version` (1 on
 * create, one more on each put, ended by a delete). A conditional put is one etcd transaction —
 * `if (version == n) put else get`; with a put id, `if (version == n and no record of the id)
 * put both, else get both` — whose else branch tells `ErrNoKey`, `ErrVersion` and a decision
 * already recorded apart at the same revision. Reads are etcd's linearizable reads. Completion
 * records are etcd keys too, so any number of kv servers may share one cluster: the store keeps
 * only its lease for new records and a count of them.
 */
export class EtcdStore implements Store {
  readonly #client: Etcd3;
  readonly #kv: Namespace;
  readonly #callTimeoutMs: number;
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #watchers = new KeyWatchers();
  #watching: Promise<Watcher | undefined> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  readonly #retentionMs: number;
  readonly #maxIds: number;
  readonly #recordRefusals: boolean;
  #lease: { id: Promise<string>; grantedAt: number } | undefined;
  // The records in etcd as last counted (every kv server's), and those this one made since.
  #recordCount = { counted: 0, at: Number.NEGATIVE_INFINITY, added: 0, addedBefore: 0, counting: undefined as Promise<void> | undefined };

  constructor(options: EtcdStoreOptions) {
    this.#client = new Etcd3({
      hosts: [...options.endpoints],
      // etcd3 re-sends a failed call to another member by default. A re-sent put that had been
      // applied fails its compare and would come back a false ErrVersion: this store retries
      // itself, knowing when an outcome became unknown.
      faultHandling: {
        global: noop,
        // A member that failed twice in a row is skipped for a second (etcd3's default: three
        // failures, five seconds — with one member, five seconds of refusals after a blip).
        host: () =>
          circuitBreaker(handleWhen(isRecoverableError), {
            halfOpenAfter: BREAKER_OPEN_MS,
            breaker: new ConsecutiveBreaker(FAILURES_TO_SKIP_A_MEMBER),
          }),
      },
      // Reconnect to a member soon after a lost connection (gRPC waits a second at first).
      grpcOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1_000 },
    });
    this.#kv = this.#client.namespace(options.prefix ?? DEFAULT_PREFIX);
    this.#callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#retentionMs = options.retentionMs ?? DEFAULT_ID_RETENTION_MS;
    this.#maxIds = options.maxIds ?? DEFAULT_MAX_IDS;
    this.#recordRefusals = options.recordRefusals ?? true;
  }

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
    return this.#track(this.#get(key));
  }

  async #get(key: string): Promise<StoredEntry | undefined> {
    let lastError: unknown;
    for (let tries = 1; tries <= MAX_TRIES; tries++) {
      try {
        const res = await this.#kv.get(key).options(this.#callOptions()).exec();
        return entryOf(res.kvs[0]);
      } catch (err) {
        lastError = err;
        if (this.#closed) break;
        await pause();
      }
    }
    throw new StoreUnavailableError(`etcd did not answer a read: ${(lastError as Error).message}`, { cause: lastError });
  }

  async putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options: PutOptions = {},
  ): Promise<PutIfVersionResult> {
    this.#assertOpen();
    return this.#track(this.#putIfVersion(key, value, expectedVersion, putId, options.isRetry === true));
  }

  async #putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    isRetry: boolean,
  ): Promise<PutIfVersionResult> {
    const encoded = encodeRecord(value, putId);
    if (putId !== undefined && !(await this.#hasRoom())) {
      return { recorded: replayOf(await this.#recordedWhenFull(putId), key, expectedVersion, putId) };
    }
    let isAmbiguous = false; // a try may have reached etcd, and nobody knows whether it was applied
    let lastError: unknown;
    for (let tries = 1; tries <= MAX_TRIES; tries++) {
      try {
        if (putId === undefined) {
          // A try may have applied: another could apply the put a second time once the key
          // was deleted and made again meanwhile. Without an id, nobody can tell: 504.
          if (isAmbiguous) break;
          const res = await this.#kv
            .if(key, "Version", "==", expectedVersion)
            .then(this.#kv.put(key).value(encoded))
            .else(this.#kv.get(key))
            .options(this.#callOptions())
            .commit();
          if (res.succeeded) return { ok: true, version: expectedVersion + 1, revision: Number(res.header.revision) };
          return { ok: false, current: entryOf(res.responses[0]?.response_range.kvs[0]) };
        }
        // One transaction decides the id: applied with its record only if it has none yet, and
        // otherwise the key and the record read back at the same revision.
        const recordKey = recordKeyOf(putId);
        // The record's revision is its own mod_revision: the transaction's (see decisionOf).
        const applied = { err: "OK" as const, version: expectedVersion + 1 };
        const res = await this.#kv
          .if(key, "Version", "==", expectedVersion)
          .and(recordKey, "Create", "==", 0)
          .then(
            this.#kv.put(key).value(encoded),
            this.#kv
              .put(recordKey)
              .value(encodeDecision("put", key, expectedVersion, applied))
              .lease(await this.#leaseId()),
          )
          .else(this.#kv.get(key), this.#kv.get(recordKey))
          .options(this.#callOptions())
          .commit();
        if (res.succeeded) {
          this.#recordCount.added++;
          return { ok: true, version: expectedVersion + 1, revision: Number(res.header.revision) };
        }
        const record = decisionOf(res.responses[1]?.response_range.kvs[0]);
        if (record !== undefined) return { recorded: replayOf(record, key, expectedVersion, putId) };
        const current = entryOf(res.responses[0]?.response_range.kvs[0]);
        // Refused, with no record: an earlier try of ours may still be on its way (a retry, or a
        // try of this call that reached etcd unanswered). Recording the refusal stops it.
        if ((!isRetry && !isAmbiguous) || !this.#recordRefusals) return { ok: false, current };
        const first = await this.#recordRefusal(recordKey, "put", key, expectedVersion, refusalOf(current, expectedVersion, putId));
        return first === undefined ? { ok: false, current } : { recorded: replayOf(first, key, expectedVersion, putId) };
      } catch (err) {
        lastError = err;
        if (hasCode(err, "ERR_INVALID_ARG_VALUE")) throw err;
        if (isTooLarge(err))
          throw new KvError("ERR_KV_TOO_LARGE", `etcd refused the put as too large: ${(err as Error).message}`, { cause: err });
        if (reachedEtcd(err)) isAmbiguous = true;
        if (this.#closed) break;
        await pause();
      }
    }
    if (isAmbiguous) {
      throw new StoreOutcomeUnknownError(`etcd could not confirm a put: ${(lastError as Error).message}`, { cause: lastError });
    }
    throw new StoreUnavailableError(`etcd did not take a put: ${(lastError as Error).message}`, { cause: lastError });
  }

  /**
   * Records a refusal unless a decision was recorded first (an earlier try applied meanwhile):
   * answers that one then, which wins; undefined once the refusal is recorded.
   */
  async #recordRefusal(
    recordKey: Buffer,
    kind: "put" | "delete",
    key: string,
    named: number,
    refusal: PutDecision | DeleteDecision,
  ): Promise<CompletionRecord | undefined> {
    const res = await this.#kv
      .if(recordKey, "Create", "==", 0)
      .then(
        this.#kv
          .put(recordKey)
          .value(encodeDecision(kind, key, named, refusal))
          .lease(await this.#leaseId()),
      )
      .else(this.#kv.get(recordKey))
      .options(this.#callOptions())
      .commit();
    if (res.succeeded) {
      this.#recordCount.added++;
      return undefined;
    }
    const record = decisionOf(res.responses[0]?.response_range.kvs[0]);
    if (record === undefined) throw new StoreOutcomeUnknownError("etcd lost a completion record while it was read");
    return record;
  }

  /** With `maxIds` records kept, only a try of a write already decided is answered, from its record. */
  async #recordedWhenFull(id: string): Promise<CompletionRecord> {
    const read = await this.#kv
      .get(recordKeyOf(id))
      .options(this.#callOptions())
      .exec()
      .catch((err: unknown) => {
        throw new StoreUnavailableError(`etcd did not answer a read: ${(err as Error).message}`, { cause: err });
      });
    const record = decisionOf(read.kvs[0]);
    if (record === undefined) throw recordsFull(this.#maxIds);
    return record;
  }

  async deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    deleteId: string | undefined,
    options: PutOptions = {},
  ): Promise<DeleteIfVersionResult> {
    this.#assertOpen();
    return this.#track(this.#deleteIfVersion(key, expectedVersion, deleteId, options.isRetry === true));
  }

  /** As a put: one transaction decides, the failure branch reads the key (and the record) back. */
  async #deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    id: string | undefined,
    isRetry: boolean,
  ): Promise<DeleteIfVersionResult> {
    const named = expectedVersion ?? ANY_VERSION;
    if (id !== undefined && !(await this.#hasRoom())) return { recorded: replayDeleteOf(await this.#recordedWhenFull(id), key, named, id) };
    let isAmbiguous = false;
    let lastError: unknown;
    for (let tries = 1; tries <= MAX_TRIES; tries++) {
      try {
        // Present (version above 0), and at the version named if one is.
        const present = this.#kv.if(key, "Version", ">", 0);
        const condition = expectedVersion === undefined ? present : present.and(key, "Version", "==", expectedVersion);
        if (id === undefined) {
          if (isAmbiguous) break; // as for a put without an id
          const res = await condition.then(this.#kv.delete().key(key)).else(this.#kv.get(key)).options(this.#callOptions()).commit();
          if (res.succeeded) return { ok: true, revision: Number(res.header.revision) };
          return { ok: false, current: entryOf(res.responses[0]?.response_range.kvs[0]) };
        }
        const recordKey = recordKeyOf(id);
        const res = await condition
          .and(recordKey, "Create", "==", 0)
          .then(
            this.#kv.delete().key(key),
            this.#kv
              .put(recordKey)
              .value(encodeDecision("delete", key, named, { err: "OK" }))
              .lease(await this.#leaseId()),
          )
          .else(this.#kv.get(key), this.#kv.get(recordKey))
          .options(this.#callOptions())
          .commit();
        if (res.succeeded) {
          this.#recordCount.added++;
          return { ok: true, revision: Number(res.header.revision) };
        }
        const record = decisionOf(res.responses[1]?.response_range.kvs[0]);
        if (record !== undefined) return { recorded: replayDeleteOf(record, key, named, id) };
        const current = entryOf(res.responses[0]?.response_range.kvs[0]);
        if ((!isRetry && !isAmbiguous) || !this.#recordRefusals) return { ok: false, current };
        const first = await this.#recordRefusal(recordKey, "delete", key, named, deleteRefusalOf(current));
        return first === undefined ? { ok: false, current } : { recorded: replayDeleteOf(first, key, named, id) };
      } catch (err) {
        lastError = err;
        if (hasCode(err, "ERR_INVALID_ARG_VALUE")) throw err;
        if (reachedEtcd(err)) isAmbiguous = true;
        if (this.#closed) break;
        await pause();
      }
    }
    if (isAmbiguous) {
      throw new StoreOutcomeUnknownError(`etcd could not confirm a delete: ${(lastError as Error).message}`, { cause: lastError });
    }
    throw new StoreUnavailableError(`etcd did not take a delete: ${(lastError as Error).message}`, { cause: lastError });
  }

  /** The lease new records are attached to: granted lazily, replaced once a quarter of the retention old. */
  #leaseId(): Promise<string> {
    const now = performance.now();
    const rotationMs = this.#retentionMs / LEASE_ROTATIONS_PER_RETENTION;
    if (this.#lease !== undefined && now - this.#lease.grantedAt < rotationMs) return this.#lease.id;
    // Counted from before the grant is asked for: etcd's TTL starts no sooner.
    const ttlSeconds = Math.ceil((this.#retentionMs + rotationMs + this.#callTimeoutMs) / 1000);
    const id = this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds }, this.#callOptions()).then((res) => String(res.ID));
    const lease = { id, grantedAt: now };
    this.#lease = lease;
    id.catch(() => {
      if (this.#lease === lease) this.#lease = undefined; // the next write asks again
    });
    return id;
  }

  /** Whether fewer than `maxIds` records are kept, by a count at most a second old (every server's, plus this one's since). */
  async #hasRoom(): Promise<boolean> {
    const count = this.#recordCount;
    if (performance.now() - count.at > RECORD_COUNT_MAX_AGE_MS) {
      const addedBefore = count.added; // those made while it counts may be in the count, or not: kept on top
      count.counting ??= this.#countRecords()
        .then((n) => {
          count.counted = n;
          count.addedBefore = addedBefore;
          count.at = performance.now();
        })
        .catch(() => {}) // counted again at the next write
        .finally(() => (count.counting = undefined));
      // A stale count near the cap is waited for; far below it, the write goes on.
      if (count.counted + count.added - count.addedBefore >= this.#maxIds / 2) await count.counting;
    }
    return count.counted + count.added - count.addedBefore < this.#maxIds;
  }

  #countRecords(): Promise<number> {
    return this.#kv
      .getAll()
      .prefix(Buffer.from([RECORD_MARK]))
      .options(this.#callOptions())
      .count();
  }

  /** How many completion records etcd keeps under this prefix now, every kv server's. */
  async completionRecords(): Promise<number> {
    this.#assertOpen();
    return this.#track(this.#countRecords());
  }

  /**
   * Wakes `onChange` after a put to `key` through any kv server on this cluster and prefix: one
   * etcd watch on the whole prefix, made at the first call and kept until `close()`. Each time
   * that watch (re)connects every waiter is woken too, so a write it could not see is read.
   */
  watch(key: string, onChange: () => void): () => void {
    const stop = this.#watchers.add(key, onChange);
    this.#startWatching();
    return stop;
  }

  #startWatching(): void {
    if (this.#watching !== undefined || this.#closed) return;
    const watching: Promise<Watcher | undefined> = this.#kv
      .watch()
      .inRange({ start: "", end: Buffer.from([RECORD_MARK]) }) // every key, and none of the records
      .create()
      .then((watcher) => {
        watcher.on("put", (kv) => this.#watchers.notify(kv.key.toString("utf8")));
        watcher.on("delete", (kv) => this.#watchers.notify(kv.key.toString("utf8")));
        // Disconnections etcd3 heals itself, then says "connected": what it missed is read again.
        watcher.on("connected", () => this.#watchers.notifyAll());
        // etcd3 does not resume a watch etcd ended (e.g. compacted past it): make another for
        // those still waiting, and wake them to read what the gap may have hidden.
        const replace = () => {
          if (this.#watching !== watching) return;
          this.#watching = undefined;
          watcher.cancel().catch(() => {});
          if (!this.#watchers.isEmpty()) this.#startWatching();
          this.#watchers.notifyAll();
        };
        watcher.on("error", replace);
        watcher.on("end", replace);
        this.#watchers.notifyAll();
        return watcher;
      })
      .catch(() => {
        if (this.#watching === watching) this.#watching = undefined; // the next waiter tries again; this one reads on its timeout
        return undefined;
      });
    this.#watching = watching;
  }

  /** Whether a linearizable read succeeds now: etcd is reachable and has a quorum. */
  async isReady(): Promise<boolean> {
    if (this.#closed) return false;
    try {
      await this.#get(""); // the prefix itself: a key kv never writes
      return true;
    } catch {
      return false;
    }
  }

  /** Lets the calls in flight finish (each within its tries' deadlines), then closes the client. */
  close(): Promise<void> {
    this.#closed = true;
    this.#closing ??= Promise.allSettled(this.#inFlight).then(() => {
      // Not awaited: etcd3 settles neither a watch being made nor its cancel while etcd is unreachable.
      void this.#watching?.then((watcher) => watcher?.cancel()).catch(() => {});
      this.#client.close();
    });
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #track<T>(call: Promise<T>): Promise<T> {
    this.#inFlight.add(call);
    return call.finally(() => this.#inFlight.delete(call));
  }

  #callOptions() {
    return { deadline: Date.now() + this.#callTimeoutMs };
  }

  #assertOpen(): void {
    if (this.#closed) throw new KvError("ERR_KV_CLOSED", "the etcd store is closed");
  }
}

/**
 * An {@link EtcdStore} on `options.endpoints`. Connections are made on first use, so it opens
 * while etcd is down (`/readyz` then says so). Rejects `StoreOpenError` for a malformed
 * endpoint or prefix.
 */
export async function openEtcdStore(options: EtcdStoreOptions): Promise<EtcdStore> {
  if (options.endpoints.length === 0) throw new StoreOpenError("etcd: no endpoints given");
  for (const url of options.endpoints) {
    if (!/^https?:\/\/[^/\s]+$/.test(url))
      throw new StoreOpenError(`etcd endpoints must be http(s)://host:port, got ${JSON.stringify(url)}`);
  }
  if (options.prefix === "") throw new StoreOpenError("etcd prefix must not be empty: kv would share etcd's whole keyspace");
  return new EtcdStore(options);
}

/**
 * What a key holds in etcd (its version is etcd's own): two bytes, the put id's length in
 * UTF-8 bytes (0: none), the put id, then the value's UTF-8 — no escaping, so a value takes its
 * own size in etcd's request limit (1.5 MiB by default).
 */
function encodeRecord(value: string, putId: string | undefined): Buffer {
  const id = Buffer.from(putId ?? "", "utf8");
  const head = Buffer.alloc(2);
  head.writeUInt16BE(id.length);
  return Buffer.concat([head, id, Buffer.from(value, "utf8")]);
}

function recordKeyOf(putId: string): Buffer {
  return Buffer.concat([Buffer.from([RECORD_MARK]), Buffer.from(putId, "utf8")]);
}

/**
 * A completion record as etcd keeps it: JSON of the write it was made for and its decision —
 * an applied put's without its revision, which is the record's own mod_revision (written in the
 * put's transaction).
 */
function encodeDecision(kind: "put" | "delete", key: string, version: number, decision: { err: string }): string {
  return JSON.stringify(kind === "put" ? { k: key, n: version, d: decision } : { t: "d", k: key, n: version, d: decision });
}

function decisionOf(kv: IKeyValue | undefined): CompletionRecord | undefined {
  if (kv === undefined) return undefined;
  const { t, k, n, d } = JSON.parse(kv.value.toString("utf8")) as { t?: "d"; k: string; n: number; d: PutDecision };
  // An OK found by the old rule and recorded as a retry's refusal carries its revision already.
  const decision = d.err === "OK" && d.revision === undefined ? { ...d, revision: Number(kv.mod_revision) } : d;
  if (t === "d") {
    return {
      kind: "delete",
      key: k,
      version: n,
      decision: decision.err === "OK" ? { err: "OK", revision: decision.revision } : decision,
      at: 0,
    };
  }
  return { kind: "put", key: k, version: n, decision, at: 0 };
}

function entryOf(kv: IKeyValue | undefined): StoredEntry | undefined {
  if (kv === undefined) return undefined;
  const idEnd = 2 + kv.value.readUInt16BE(0);
  const value = kv.value.toString("utf8", idEnd);
  const entry = {
    value,
    version: Number(kv.version),
    modRevision: Number(kv.mod_revision),
    createRevision: Number(kv.create_revision),
  };
  return idEnd === 2 ? entry : { ...entry, putId: kv.value.toString("utf8", 2, idEnd) };
}

/**
 * etcd's refusal of a request over its `--max-request-bytes` (1.5 MiB by default; past 2 MiB
 * gRPC itself refuses it): permanent, and nothing was applied.
 */
function isTooLarge(err: unknown): boolean {
  return /request is too large|received message larger than max/.test((err as Error).message);
}

/**
 * Whether a failed call may have reached etcd. A call refused before it was sent (every member's
 * circuit open, or no connection to send it on) surely did not; a lost connection or a deadline
 * may have come after etcd applied it.
 */
function reachedEtcd(err: unknown): boolean {
  if (isBrokenCircuitError(err)) return false;
  // gRPC's words for a call that found no connection to go out on.
  return !/No connection established|ECONNREFUSED/.test((err as Error).message);
}

const pause = () => new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS));
