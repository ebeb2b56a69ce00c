export { KVServer, type ServerPutResult } from "./kv-server";
export { MemoryStore } from "./memory-store";
export { KeyWatchers } from "./key-watchers";
export {
  type Store,
  type StoredEntry,
  type PutIfVersionResult,
  StoreUnavailableError,
  StoreOutcomeUnknownError,
  StoreOpenError,
} from "./store";
