import { KvError } from "@kv/rpc";
import { KeyWatchers } from "./key-watchers";
import type { PutIfVersionResult, Store, StoredEntry } from "./store";

/**
 * A `Store` in this process's memory: fast, and lost when the process ends. Each call runs to
 * completion without yielding, which makes `putIfVersion` atomic.
 */
export class MemoryStore implements Store {
  // A Map, not an object: keys such as `__proto__` and `constructor` are ordinary keys.
  readonly #entries = new Map<string, StoredEntry>();
  readonly #watchers = new KeyWatchers();
  #isClosed = false;

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
    return this.#entries.get(key);
  }

  async putIfVersion(key: string, value: string, expectedVersion: number, putId: string | undefined): Promise<PutIfVersionResult> {
    this.#assertOpen();
    const current = this.#entries.get(key);
    if ((current?.version ?? 0) !== expectedVersion) return { ok: false, current };
    const version = expectedVersion + 1;
    this.#entries.set(key, putId === undefined ? { value, version } : { value, version, putId });
    this.#watchers.notify(key);
    return { ok: true, version };
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
