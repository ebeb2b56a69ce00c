import { KvError } from "@kv/rpc";
import {
  ANY_VERSION,
  type CompletionRecordOptions,
  CompletionRecords,
  deleteRefusalOf,
  refusalOf,
  replayDeleteOf,
  replayOf,
} from "./completion-records";
import { KeyWatchers } from "./key-watchers";
import type { DeleteIfVersionResult, PutIfVersionResult, PutOptions, Store, StoredEntry } from "./store";

/**
 * A `Store` in this process's memory: fast, and lost when the process ends. Each call runs to
 * completion without yielding, which makes `putIfVersion` atomic, with its completion record.
 */
export class MemoryStore implements Store {
  // A Map, not an object: keys such as `__proto__` and `constructor` are ordinary keys.
  readonly #entries = new Map<string, StoredEntry>();
  readonly #watchers = new KeyWatchers();
  readonly #records: CompletionRecords;
  // The store revision (contract §2): raised by every write.
  #revision = 0;
  #isClosed = false;

  /** `options`: how long completion records are kept, and how many at most. */
  constructor(options: CompletionRecordOptions = {}) {
    this.#records = new CompletionRecords(options);
  }

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
    return this.#entries.get(key);
  }

  async putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options: PutOptions = {},
  ): Promise<PutIfVersionResult> {
    this.#assertOpen();
    if (putId !== undefined) {
      const record = this.#records.get(putId);
      if (record !== undefined) return { recorded: replayOf(record, key, expectedVersion, putId) };
    }
    const current = this.#entries.get(key);
    if ((current?.version ?? 0) !== expectedVersion) {
      if (putId !== undefined && options.isRetry === true && this.#records.recordRefusals) {
        this.#records.add(putId, "put", key, expectedVersion, refusalOf(current, expectedVersion, putId));
      }
      return { ok: false, current };
    }
    if (putId !== undefined) this.#records.assertRoom();
    const version = expectedVersion + 1;
    const revision = ++this.#revision;
    const createRevision = current?.createRevision ?? revision;
    this.#entries.set(
      key,
      putId === undefined
        ? { value, version, modRevision: revision, createRevision }
        : { value, version, modRevision: revision, createRevision, putId },
    );
    if (putId !== undefined) this.#records.add(putId, "put", key, expectedVersion, { err: "OK", version, revision });
    this.#watchers.notify(key);
    return { ok: true, version, revision };
  }

  async deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    deleteId: string | undefined,
    options: PutOptions = {},
  ): Promise<DeleteIfVersionResult> {
    this.#assertOpen();
    const named = expectedVersion ?? ANY_VERSION;
    if (deleteId !== undefined) {
      const record = this.#records.get(deleteId);
      if (record !== undefined) return { recorded: replayDeleteOf(record, key, named, deleteId) };
    }
    const current = this.#entries.get(key);
    if (current === undefined || (expectedVersion !== undefined && current.version !== expectedVersion)) {
      if (deleteId !== undefined && options.isRetry === true && this.#records.recordRefusals) {
        this.#records.add(deleteId, "delete", key, named, deleteRefusalOf(current));
      }
      return { ok: false, current };
    }
    if (deleteId !== undefined) this.#records.assertRoom();
    const revision = ++this.#revision;
    this.#entries.delete(key);
    if (deleteId !== undefined) this.#records.add(deleteId, "delete", key, named, { err: "OK", revision });
    this.#watchers.notify(key);
    return { ok: true, revision };
  }

  async completionRecords(): Promise<number> {
    return this.#records.size;
  }

  watch(key: string, onChange: () => void): () => void {
    return this.#watchers.add(key, onChange);
  }

  async close(): Promise<void> {
    this.#isClosed = true;
  }

  #assertOpen(): void {
    if (this.#isClosed) throw new KvError("ERR_KV_CLOSED", "the memory store is closed");
  }
}
