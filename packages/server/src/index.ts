export { KVServer, type ServerDeleteResult, type ServerPutResult } from "./kv-server";
export { MemoryStore } from "./memory-store";
export { KeyWatchers } from "./key-watchers";
export {
  type Store,
  type StoredEntry,
  type PutIfVersionResult,
  type DeleteIfVersionResult,
  type PutOptions,
  StoreUnavailableError,
  StoreOutcomeUnknownError,
  StoreOpenError,
} from "./store";
export {
  CompletionRecords,
  type CompletionRecord,
  type CompletionRecordOptions,
  type PutDecision,
  type DeleteDecision,
  ANY_VERSION,
  deleteRefusalOf,
  replayDeleteOf,
  DEFAULT_ID_RETENTION_MS,
  DEFAULT_MAX_IDS,
  recordsFull,
  refusalOf,
  replayOf,
} from "./completion-records";
