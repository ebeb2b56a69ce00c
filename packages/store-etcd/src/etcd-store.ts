import { KvError } from "@kv/rpc";
import {
  type PutIfVersionResult,
  type Store,
  type StoredEntry,
  StoreOpenError,
  StoreOutcomeUnknownError,
  StoreUnavailableError,
} from "@kv/server";
import { ConsecutiveBreaker, circuitBreaker, handleWhen, isBrokenCircuitError, noop } from "cockatiel";
import { Etcd3, type IKeyValue, isRecoverableError, type Namespace } from "etcd3";

/** `openEtcdStore`'s options. */
export interface EtcdStoreOptions {
  /** etcd client URLs, e.g. `["http://10.0.0.1:2379", "http://10.0.0.2:2379"]`. */
  endpoints: readonly string[];
  /** kv's keys live under this prefix in etcd (default `"kv/"`), so one cluster can serve several kvs. */
  prefix?: string;
  /** One call to etcd; longer counts as failed (default 1 500 ms). */
  callTimeoutMs?: number;
}

/** What a key holds in etcd; its version is etcd's own per-key version. */
interface Record {
  v: string;
  p?: string;
}

const DEFAULT_PREFIX = "kv/";
// Longer than etcd's leader election with its default 1 s election timeout: a call that waits
// out an election succeeds; one that cannot, fails while the clerk's try (5 s) still waits.
const DEFAULT_CALL_TIMEOUT_MS = 1_500;
// Tries of one store call, each to a member picked at random: a dead member costs one try.
const MAX_TRIES = 3;
const RETRY_PAUSE_MS = 50;
const BREAKER_OPEN_MS = 1_000;

/**
 * A {@link Store} on an etcd v3 cluster. A kv version is etcd's per-key `version` (1 on
 * create, one more on each put; kv never deletes). A conditional put is one etcd transaction —
 * `if (version == n) put else get` — whose else branch tells `ErrNoKey` from `ErrVersion` at
 * the same revision. Reads are etcd's linearizable reads. The store keeps no state of its own,
 * so any number of kv servers may share one cluster.
 */
export class EtcdStore implements Store {
  readonly #client: Etcd3;
  readonly #kv: Namespace;
  readonly #callTimeoutMs: number;
  #closed = false;

  constructor(options: EtcdStoreOptions) {
    this.#client = new Etcd3({
      hosts: [...options.endpoints],
      // etcd3 re-sends a failed call to another member by default. A re-sent put that had been
      // applied fails its compare and would come back a false ErrVersion: this store retries
      // itself, knowing when an outcome became unknown.
      faultHandling: {
        global: noop,
        // A member that failed three calls in a row is skipped for a second (etcd3's default is
        // five: with one member, five seconds of refusals after a blip).
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: BREAKER_OPEN_MS, breaker: new ConsecutiveBreaker(3) }),
      },
      // Reconnect to a member soon after a lost connection (gRPC waits a second at first).
      grpcOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1_000 },
    });
    this.#kv = this.#client.namespace(options.prefix ?? DEFAULT_PREFIX);
    this.#callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
  }

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
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

  async putIfVersion(key: string, value: string, expectedVersion: number, putId: string | undefined): Promise<PutIfVersionResult> {
    this.#assertOpen();
    const record: Record = putId === undefined ? { v: value } : { v: value, p: putId };
    let isAmbiguous = false; // a try reached etcd, and nobody knows whether it was applied
    let lastError: unknown;
    for (let tries = 1; tries <= MAX_TRIES; tries++) {
      try {
        const res = await this.#kv
          .if(key, "Version", "==", expectedVersion)
          .then(this.#kv.put(key).value(JSON.stringify(record)))
          .else(this.#kv.get(key))
          .options(this.#callOptions())
          .commit();
        if (res.succeeded) return { ok: true, version: expectedVersion + 1 };
        const current = entryOf(res.responses[0]?.response_range.kvs[0]);
        // After an unanswered try, a refusal says nothing unless the entry is that try's own
        // write (KVServer answers OK by its put id) or the key is still absent, so the try was
        // refused too (versions only grow; kv never deletes).
        const isOursOrNothing = current === undefined || (putId !== undefined && current.putId === putId && current.version === expectedVersion + 1);
        if (isAmbiguous && !isOursOrNothing) break;
        return { ok: false, current };
      } catch (err) {
        lastError = err;
        if (reachedEtcd(err)) isAmbiguous = true;
        if (this.#closed) break;
        await pause();
      }
    }
    if (isAmbiguous) {
      throw new StoreOutcomeUnknownError(`etcd could not confirm a put: ${(lastError as Error | undefined)?.message ?? "another write came after it"}`, {
        cause: lastError,
      });
    }
    throw new StoreUnavailableError(`etcd did not take a put: ${(lastError as Error).message}`, { cause: lastError });
  }

  /** Whether a linearizable read succeeds now: etcd is reachable and has a quorum. */
  async isReady(): Promise<boolean> {
    if (this.#closed) return false;
    try {
      await this.#kv.get("").options(this.#callOptions()).exec();
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
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
    if (!/^https?:\/\/[^/\s]+$/.test(url)) throw new StoreOpenError(`etcd endpoints must be http(s)://host:port, got ${JSON.stringify(url)}`);
  }
  if (options.prefix === "") throw new StoreOpenError("etcd prefix must not be empty: kv would share etcd's whole keyspace");
  return new EtcdStore(options);
}

function entryOf(kv: IKeyValue | undefined): StoredEntry | undefined {
  if (kv === undefined) return undefined;
  const record = JSON.parse(kv.value.toString("utf8")) as Record;
  const version = Number(kv.version);
  return record.p === undefined ? { value: record.v, version } : { value: record.v, version, putId: record.p };
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
