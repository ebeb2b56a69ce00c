/** The outcomes of `get` and `put`: values at every layer, never exceptions. */
export const Err = {
  OK: "OK",
  ErrNoKey: "ErrNoKey",
  ErrVersion: "ErrVersion",
  ErrMaybe: "ErrMaybe",
} as const;
export type Err = (typeof Err)[keyof typeof Err];

/**
 * `get`: the value, its version, the store revision of the write that made that version
 * (`modRevision`) and of the one that created the key (`createRevision`); or `ErrNoKey`.
 */
export type GetResult = { err: "OK"; value: string; version: number; modRevision: number; createRevision: number } | { err: "ErrNoKey" };

/**
 * `put`: the key's new version, `ErrVersion` (the key exists at another version),
 * `ErrNoKey` (absent and version > 0), or — from a clerk only — `ErrMaybe` (no try got a
 * reply within the clerk's `retryLimitMs`; against a server without completion records, also
 * a retry that met `ErrVersion` after an earlier try got no reply): the put may have been applied.
 * `revision` is the store revision the put made (contract §2): greater than every earlier write's.
 */
export type PutResult = { err: "OK"; version: number; revision: number } | { err: "ErrVersion" | "ErrNoKey" | "ErrMaybe" };

/**
 * `delete`: the store revision the delete made; `ErrNoKey` (absent); `ErrVersion` (present at
 * another version than the one named); or — from a clerk only — `ErrMaybe`, as for a put.
 */
export type DeleteResult = { err: "OK"; revision: number } | { err: "ErrVersion" | "ErrNoKey" | "ErrMaybe" };

/** The largest version a key can have; a put is refused before it would pass it. */
export const MAX_VERSION = Number.MAX_SAFE_INTEGER;

/** Put ids are 1–64 characters (contract §2). */
export const MAX_PUT_ID_LENGTH = 64;

/** The longest a long-poll read may wait (contract §4). */
export const MAX_WAIT_MS = 60_000;
