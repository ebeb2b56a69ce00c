export { LmdbStore, type LmdbStoreOptions, openLmdbStore } from "./lmdb-store";
