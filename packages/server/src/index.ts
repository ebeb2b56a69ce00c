export { KVServer, type ServerPutResult } from "./kv-server";
export { MemoryStore } from "./memory-store";
export type { Store, StoredEntry, PutIfVersionResult } from "./store";
