import { type CompletionRecordOptions, MemoryStore, type Store } from "@kv/server";
import { openEtcdStore } from "@kv/store-etcd";
import { openLmdbStore } from "@kv/store-lmdb";
import type { StoreConfig } from "./config";

/**
 * Opens the store the configuration names, keeping completion records as `records` says;
 * rejects `StoreOpenError` (`ERR_KV_STORE_OPEN`) when it cannot.
 */
export async function openStore(config: StoreConfig, records: CompletionRecordOptions = {}): Promise<Store> {
  switch (config.kind) {
    case "memory":
      return new MemoryStore(records);
    case "lmdb":
      return openLmdbStore({ path: config.path, ...records });
    case "etcd":
      return openEtcdStore({ endpoints: config.endpoints, prefix: config.prefix, ...records });
  }
}
