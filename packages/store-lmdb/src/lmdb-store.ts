import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join, resolve } from "node:path";
import { hasCode, KvError } from "@kv/rpc";
import {
  ANY_VERSION,
  type CompletionRecord,
  type CompletionRecordOptions,
  CompletionRecords,
  type DeleteIfVersionResult,
  deleteRefusalOf,
  KeyWatchers,
  type PutIfVersionResult,
  type PutOptions,
  recordsFull,
  refusalOf,
  replayDeleteOf,
  replayOf,
  type Store,
  StoreOpenError,
  type StoredEntry,
} from "@kv/server";
import { open, type RootDatabase } from "lmdb";

/** `openLmdbStore`'s options; besides the path, how long completion records are kept and how many at most. */
export interface LmdbStoreOptions extends CompletionRecordOptions {
  /** The data directory; created when absent. Its name may contain dots. */
  path: string;
}

/**
 * What one key holds in LMDB. LMDB's own per-entry version is the entry's `modRevision`, which
 * never repeats: a write conditional on it applies only to the very state it read.
 */
interface Record {
  /** The value. */
  v: string;
  /** The key's version; absent in an entry written before revisions (format 1), whose LMDB version is its kv version. */
  n?: number;
  /** The key's `createRevision` (with `n`). */
  c?: number;
  /** The put id that wrote this version, when it had one. */
  p?: string;
  /** The key itself, kept only when the LMDB key is its digest (see `lmdbKey`). */
  k?: string;
}

/**
 * The completion record of a write that applied, kept on disk with the write it records: a put's
 * [version named, key, revision made]; a delete's the same and "d" ({@link ANY_VERSION} named: unconditional).
 */
type AppliedRecord = [number, string, number] | [number, string, number, "d"];

// Completion records live in the same LMDB database as the keys, under 0xFE + when (8 bytes) +
// the id: no UTF-8 string starts with 0xFE, so they never meet a key (not a named database:
// LMDB keeps the names of named databases as keys of the main one, where a kv key of the same
// name would collide). In time order, new records are appended at the end of the tree rather
// than scattered through it: a commit dirties a page or two for them, not one per record.
const RECORD_MARK = 0xfe;
// The store's own entries (its format, its revision) live under 0xFD, which no UTF-8 key starts with either.
const META_MARK = 0xfd;
const FORMAT_KEY = Buffer.from("\xfdformat", "latin1");
// A put's revision is its entry's LMDB version; a delete, which leaves no entry, writes its
// revision here. At open the store revision is the largest of them all.
const REVISION_KEY = Buffer.from("\xfdrevision", "latin1");
// Entries written before revisions read as made and created at this revision: above every
// version then stored, so fencing tokens (versions then, revisions now) keep growing.
const BASE_REVISION_KEY = Buffer.from("\xfdbase-revision", "latin1");
/** 1: entries without revisions (no marker); 2: revisions, LMDB's entry version is the modRevision. */
const FORMAT = 2;
// Expired records are removed this often, in the background, as ordinary batched writes.
const SWEEP_INTERVAL_MS = 1_000;
const SWEEP_BATCH = 10_000;

// LMDB keys are at most 1978 bytes; kv keys may be longer (4096 bytes). A longer key is stored
// under 0xFF + its SHA-256: no UTF-8 string starts with the byte 0xFF, so the two never meet.
const MAX_DIRECT_KEY_BYTES = 1024;
const DIGEST_MARK = 0xff;

/**
 * A durable {@link Store} on LMDB (lmdb-js). A put is answered only once its commit is synced
 * to disk (`overlappingSync: false`: LMDB's commit syncs before it returns), and the writes
 * that arrive while one commit syncs are committed together by the next one, so concurrent
 * writers share syncs. The conditional put is LMDB's own conditional write on the entry's
 * version, run in the write transaction: no lock in JavaScript.
 */
export class LmdbStore implements Store {
  readonly #db: RootDatabase<Record, Buffer>;
  readonly #guard: Server;
  // One process per directory (see holdExclusively): this process sees every write.
  readonly #watchers = new KeyWatchers();
  // Refusals are recorded in memory only (contract §2): no try outlives this process, the only one on the directory.
  readonly #refusals: CompletionRecords;
  // The applied records on disk, id → when, oldest first: what expiry walks and the cap counts.
  readonly #applied: Map<string, number>;
  // Records on their way to disk: counted against maxIds already.
  #pendingRecords = 0;
  // The store revision (contract §2): the last one given to a write, committed or on its way.
  #revision: number;
  readonly #baseRevision: number;
  readonly #sweeper: NodeJS.Timeout;
  #closed: Promise<void> | undefined;

  private constructor(
    db: RootDatabase<Record, Buffer>,
    guard: Server,
    options: CompletionRecordOptions,
    revisions: { revision: number; baseRevision: number },
  ) {
    this.#db = db;
    this.#guard = guard;
    this.#revision = revisions.revision;
    this.#baseRevision = revisions.baseRevision;
    this.#refusals = new CompletionRecords(options);
    this.#applied = loadAppliedRecords(db);
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_INTERVAL_MS).unref();
  }

  /** @internal Use {@link openLmdbStore}. */
  static async open(options: LmdbStoreOptions): Promise<LmdbStore> {
    const path = resolve(options.path);
    let guard: Server;
    try {
      checkDirectory(path);
      guard = await holdExclusively(path);
    } catch (err) {
      if (hasCode(err, "ERR_KV_STORE_OPEN")) throw err;
      throw new StoreOpenError(`cannot use ${path}: ${(err as Error).message}`, { cause: err }); // permissions, a file in the way…
    }
    try {
      const db = open<Record, Buffer>({
        path,
        noSubdir: false, // lmdb-js takes a path with a dot for a file unless told
        useVersions: true,
        keyEncoding: "binary",
        encoding: "msgpack",
        overlappingSync: false,
      });
      db.getEntry(Buffer.from([0])); // opening is lazy in places: read once, so a bad file fails here
      return new LmdbStore(db, guard, options, await upgradeToCurrentFormat(db, path));
    } catch (err) {
      guard.close();
      if (hasCode(err, "ERR_KV_STORE_OPEN")) throw err;
      throw new StoreOpenError(`cannot open the LMDB environment in ${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
    return this.#read(key)?.entry;
  }

  /**
   * Two tries of one put may race here: each is decided by LMDB's conditional write on the
   * entry it read, and one that loses reads the key back, finds its own id at the version above
   * the one it named (`refusalOf`) or its record, and records the same decision. A retry's
   * refusal is recorded, so an earlier try refused now never applies later, even once the key
   * is deleted and created again up to the version it named.
   */
  putIfVersion(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    options: PutOptions = {},
  ): Promise<PutIfVersionResult> {
    return this.#put(key, value, expectedVersion, putId, options.isRetry === true);
  }

  async #put(
    key: string,
    value: string,
    expectedVersion: number,
    putId: string | undefined,
    isRetry: boolean,
  ): Promise<PutIfVersionResult> {
    this.#assertOpen();
    if (putId !== undefined) {
      const record = this.#recordOf(putId);
      if (record !== undefined) return { recorded: replayOf(record, key, expectedVersion, putId) };
    }
    // A put that cannot apply is answered from a read: no write transaction, no sync. Under
    // contention (a lock's waiters racing for a released key) most puts are such puts.
    let read = this.#read(key);
    if ((read?.entry.version ?? 0) !== expectedVersion) return this.#refuse(key, expectedVersion, putId, isRetry, read?.entry);
    const lmdb = lmdbKey(key);
    const version = expectedVersion + 1;
    if (putId !== undefined) {
      this.#assertRoom();
      this.#pendingRecords++;
    }
    try {
      while (true) {
        // Applied in the write transaction only if the entry is still the one read (absent:
        // still absent), its revision as its LMDB version, with its completion record; resolves
        // once the commit is on disk. Writes commit in the order they are given here, so revisions given
        // in that order grow with the commits (a refused write leaves a gap).
        const revision = ++this.#revision;
        const stored: Record = { v: value, n: version, c: read?.entry.createRevision ?? revision };
        if (putId !== undefined) stored.p = putId;
        if (lmdb[0] === DIGEST_MARK) stored.k = key;
        let at = 0;
        let isApplied: boolean;
        if (putId === undefined) {
          // lmdb-js takes ifVersion null for "only if absent", though its types say number.
          isApplied = await this.#db.put(lmdb, stored, revision, (read === undefined ? null : read.stamp) as number);
        } else {
          const write = () => {
            this.#db.put(lmdb, stored, revision);
            at = this.#refusals.now();
            this.#db.put(recordKey(at, putId), [expectedVersion, key, revision] satisfies AppliedRecord as never);
          };
          isApplied = await (read === undefined ? this.#db.ifNoExists(lmdb, write) : this.#db.ifVersion(lmdb, read.stamp, write));
        }
        if (isApplied) {
          if (putId !== undefined) this.#applied.set(putId, at);
          this.#watchers.notify(key);
          return { ok: true, version, revision };
        }
        // LMDB says only "not applied", not why: the entry read now explains the refusal at this
        // very moment. One read back at expectedVersion moved there since: the put may apply now.
        this.#assertOpen(); // closed while the put was committed: the environment is gone
        read = this.#read(key);
        if ((read?.entry.version ?? 0) !== expectedVersion) return this.#refuse(key, expectedVersion, putId, isRetry, read?.entry);
      }
    } finally {
      if (putId !== undefined) this.#pendingRecords--;
    }
  }

  /** A put refused by `current`; a retry's refusal recorded. */
  #refuse(
    key: string,
    expectedVersion: number,
    putId: string | undefined,
    isRetry: boolean,
    current: StoredEntry | undefined,
  ): PutIfVersionResult {
    // An earlier try of this id may have committed in a batch before this one, and others may
    // have written the key since: `current` no longer shows it, its record does.
    const record = putId === undefined ? undefined : this.#recordOf(putId);
    if (record !== undefined) return { recorded: replayOf(record, key, expectedVersion, putId as string) };
    if (putId !== undefined && isRetry && this.#refusals.recordRefusals) {
      this.#assertRoom();
      this.#refusals.add(putId, "put", key, expectedVersion, refusalOf(current, expectedVersion, putId));
    }
    return { ok: false, current };
  }

  deleteIfVersion(
    key: string,
    expectedVersion: number | undefined,
    deleteId: string | undefined,
    options: PutOptions = {},
  ): Promise<DeleteIfVersionResult> {
    return this.#delete(key, expectedVersion, deleteId, options.isRetry === true);
  }

  /** As {@link #put}: a write conditional on the very entry read, retried while the entry moved but still qualifies. */
  async #delete(
    key: string,
    expectedVersion: number | undefined,
    id: string | undefined,
    isRetry: boolean,
  ): Promise<DeleteIfVersionResult> {
    this.#assertOpen();
    const named = expectedVersion ?? ANY_VERSION;
    if (id !== undefined) {
      const record = this.#recordOf(id);
      if (record !== undefined) return { recorded: replayDeleteOf(record, key, named, id) };
    }
    const refuses = (read: StoredEntry | undefined) =>
      read === undefined || (expectedVersion !== undefined && read.version !== expectedVersion);
    let read = this.#read(key);
    if (read === undefined || refuses(read.entry)) return this.#refuseDelete(key, named, id, isRetry, read?.entry);
    const lmdb = lmdbKey(key);
    if (id !== undefined) {
      this.#assertRoom();
      this.#pendingRecords++;
    }
    try {
      while (true) {
        const revision = ++this.#revision;
        let at = 0;
        const write = () => {
          this.#db.remove(lmdb);
          this.#db.put(REVISION_KEY, revision as never);
          if (id === undefined) return;
          at = this.#refusals.now();
          this.#db.put(recordKey(at, id), [named, key, revision, "d"] satisfies AppliedRecord as never);
        };
        if (await this.#db.ifVersion(lmdb, read.stamp, write)) {
          if (id !== undefined) this.#applied.set(id, at);
          this.#watchers.notify(key);
          return { ok: true, revision };
        }
        this.#assertOpen();
        read = this.#read(key);
        if (read === undefined || refuses(read.entry)) return this.#refuseDelete(key, named, id, isRetry, read?.entry);
      }
    } finally {
      if (id !== undefined) this.#pendingRecords--;
    }
  }

  /** A delete refused by `current`; a retry's refusal recorded (see {@link #refuse}). */
  #refuseDelete(
    key: string,
    named: number,
    id: string | undefined,
    isRetry: boolean,
    current: StoredEntry | undefined,
  ): DeleteIfVersionResult {
    const record = id === undefined ? undefined : this.#recordOf(id);
    if (record !== undefined) return { recorded: replayDeleteOf(record, key, named, id as string) };
    if (id !== undefined && isRetry && this.#refusals.recordRefusals) {
      this.#assertRoom();
      this.#refusals.add(id, "delete", key, named, deleteRefusalOf(current));
    }
    return { ok: false, current };
  }

  /** How many completion records are kept: applied ones on disk, refusals in memory. */
  async completionRecords(): Promise<number> {
    this.#sweep();
    return this.#applied.size + this.#refusals.size;
  }

  get #recordCount(): number {
    return this.#applied.size + this.#refusals.size + this.#pendingRecords;
  }

  #recordOf(putId: string): CompletionRecord | undefined {
    const refusal = this.#refusals.get(putId);
    if (refusal !== undefined) return refusal;
    const at = this.#applied.get(putId);
    if (at === undefined || this.#isExpired(at)) return undefined;
    const applied = this.#db.get(recordKey(at, putId)) as unknown as AppliedRecord | undefined;
    if (applied === undefined) return undefined;
    const [named, key, revision, kind] = applied;
    if (kind === "d") return { kind: "delete", key, version: named, decision: { err: "OK", revision }, at };
    return { kind: "put", key, version: named, decision: { err: "OK", version: named + 1, revision }, at };
  }

  #assertRoom(): void {
    if (this.#recordCount < this.#refusals.maxIds) return;
    this.#sweep();
    if (this.#recordCount >= this.#refusals.maxIds) {
      throw recordsFull(this.#refusals.maxIds);
    }
  }

  /**
   * Drops the records past their retention: from memory at once, from disk in the next batched
   * write — a bounded number each time, so a backlog (records that expired while the server was
   * down) never holds one commit long.
   */
  #sweep(): void {
    this.#refusals.sweep();
    if (this.#closed !== undefined) return;
    let removed = 0;
    for (const [id, at] of this.#applied) {
      if (!this.#isExpired(at) || removed++ >= SWEEP_BATCH) break;
      this.#applied.delete(id);
      this.#db.remove(recordKey(at, id)).catch(() => {}); // closing: it is removed at the next open's first sweep
    }
  }

  #isExpired(at: number): boolean {
    return this.#refusals.now() - at >= this.#refusals.retentionMs;
  }

  watch(key: string, onChange: () => void): () => void {
    return this.#watchers.add(key, onChange);
  }

  close(): Promise<void> {
    clearInterval(this.#sweeper);
    this.#closed ??= this.#db.close().finally(() => this.#guard.close());
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The key's entry, and the LMDB version it is stored at: what a write conditional on this very state names. */
  #read(key: string): { entry: StoredEntry; stamp: number } | undefined {
    const found = this.#db.getEntry(lmdbKey(key));
    if (found === undefined) return undefined;
    const { v, n, c, p, k } = found.value;
    if (k !== undefined && k !== key) throw new Error(`SHA-256 collision between two keys: ${JSON.stringify([k, key])}`);
    const stamp = found.version as number;
    const entry =
      n === undefined
        ? { value: v, version: stamp, modRevision: this.#baseRevision, createRevision: this.#baseRevision } // format 1
        : { value: v, version: n, modRevision: stamp, createRevision: c as number };
    return { entry: p === undefined ? entry : { ...entry, putId: p }, stamp };
  }

  #assertOpen(): void {
    if (this.#closed !== undefined) throw new KvError("ERR_KV_CLOSED", "the LMDB store is closed");
  }
}

/**
 * Opens (creating when absent) the LMDB store in `options.path`. Rejects `StoreOpenError`
 * when the path is not a directory, is a directory of other files, is not an LMDB
 * environment, or is held by another process.
 */
export function openLmdbStore(options: LmdbStoreOptions): Promise<LmdbStore> {
  return LmdbStore.open(options);
}

/**
 * Brings a directory to the current format and answers its revisions. Format 1 (no marker, kv
 * before revisions) gets a base revision above every version stored — the fencing tokens it
 * gave out — in one commit; its entries stay as they are until rewritten. A newer format is
 * refused: this kv cannot tell what its entries mean.
 */
async function upgradeToCurrentFormat(db: RootDatabase<Record, Buffer>, path: string): Promise<{ revision: number; baseRevision: number }> {
  const format = db.get(FORMAT_KEY) as unknown as number | undefined;
  if (format !== undefined && format > FORMAT) {
    throw new StoreOpenError(`${path} holds kv data of format ${format}, newer than this kv reads (${FORMAT}): run a newer kv on it`);
  }
  if (format === FORMAT) {
    const revision = Math.max(db.get(REVISION_KEY) as unknown as number, largestEntryVersion(db));
    return { revision, baseRevision: db.get(BASE_REVISION_KEY) as unknown as number };
  }
  const baseRevision = largestEntryVersion(db);
  // Completion records of format 1 are [named, made, key]: they become [named, key, base revision].
  const records = [...db.getRange({ start: Buffer.from([RECORD_MARK]), end: Buffer.from([RECORD_MARK + 1]) })];
  await db.transaction(() => {
    for (const { key, value } of records) {
      const [named, , recordedKey] = value as unknown as [number, number, string];
      db.put(key, [named, recordedKey, baseRevision] satisfies AppliedRecord as never);
    }
    db.put(BASE_REVISION_KEY, baseRevision as never);
    db.put(REVISION_KEY, baseRevision as never);
    db.put(FORMAT_KEY, FORMAT as never);
  });
  return { revision: baseRevision, baseRevision };
}

/** The largest LMDB version among the kv entries: in format 2 their modRevisions, in format 1 their versions. */
function largestEntryVersion(db: RootDatabase<Record, Buffer>): number {
  let largest = 0;
  // Keys, then long keys' digests: around the store's own entries and the completion records.
  for (const range of [{ end: Buffer.from([META_MARK]) }, { start: Buffer.from([DIGEST_MARK]) }]) {
    for (const { version } of db.getRange({ ...range, versions: true })) largest = Math.max(largest, version as number);
  }
  return largest;
}

function recordKey(at: number, putId: string): Buffer {
  const key = Buffer.allocUnsafe(9 + Buffer.byteLength(putId));
  key[0] = RECORD_MARK;
  key.writeDoubleBE(at, 1); // a positive double's big-endian bytes sort as the number does
  key.write(putId, 9);
  return key;
}

/** The applied records on disk, id → when, oldest first. */
function loadAppliedRecords(db: RootDatabase<Record, Buffer>): Map<string, number> {
  const found: [string, number][] = [];
  for (const key of db.getKeys({ start: Buffer.from([RECORD_MARK]), end: Buffer.from([RECORD_MARK + 1]) })) {
    found.push([(key as Buffer).toString("utf8", 9), (key as Buffer).readDoubleBE(1)]);
  }
  return new Map(found); // in key order, which is time order
}

function lmdbKey(key: string): Buffer {
  const bytes = Buffer.from(key, "utf8");
  if (bytes.length <= MAX_DIRECT_KEY_BYTES) return bytes;
  return Buffer.concat([Buffer.from([DIGEST_MARK]), createHash("sha256").update(bytes).digest()]);
}

/** Refuses a path that holds something other than an LMDB environment (or nothing yet). */
function checkDirectory(path: string): void {
  if (!existsSync(path)) return;
  if (!statSync(path).isDirectory()) throw new StoreOpenError(`${path} is not a directory`);
  // LMDB's own two files; a crash before the first commit may leave lock.mdb alone.
  const names = readdirSync(path).filter((name) => name !== "lock.mdb");
  if (names.length > 0 && !names.includes("data.mdb")) {
    throw new StoreOpenError(`${path} is not an LMDB environment: it holds other files (${names.slice(0, 3).join(", ")}) and no data.mdb`);
  }
  if (names.includes("data.mdb") && !hasLmdbMagic(join(path, "data.mdb"))) {
    throw new StoreOpenError(`${path} is not an LMDB environment: its data.mdb does not start with an LMDB meta page`);
  }
}

// lmdb-js crashes the process (SIGSEGV) on a data.mdb that is not LMDB's, so look first: the
// first meta page holds LMDB's magic number after lmdb-js's 24-byte page header.
const LMDB_MAGIC = 0xbeefc0de;
const META_MAGIC_OFFSET = 24;

function hasLmdbMagic(file: string): boolean {
  const fd = openSync(file, "r");
  try {
    const head = Buffer.alloc(META_MAGIC_OFFSET + 4);
    const read = readSync(fd, head, 0, head.length, 0);
    return read === 0 || (read === head.length && head.readUInt32LE(META_MAGIC_OFFSET) === LMDB_MAGIC); // empty: LMDB starts it afresh
  } finally {
    closeSync(fd);
  }
}

/**
 * Holds the directory for this process: LMDB itself lets several processes share an
 * environment, but two kv servers on one directory would each think their in-process state
 * (waiters woken by writes) complete. A Linux abstract socket named after the directory's
 * device and inode is released by the kernel when the process dies, even by SIGKILL, so a
 * crash never leaves a stale lock behind.
 */
async function holdExclusively(path: string): Promise<Server> {
  mkdirSync(path, { recursive: true }); // lmdb-js would create it; first, so it has an inode to guard
  const { dev, ino } = statSync(path);
  const guard = createServer();
  if (process.platform !== "linux") return guard; // abstract sockets are Linux's; elsewhere, unguarded
  await new Promise<void>((resolveListen, reject) => {
    guard.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        err.code === "EADDRINUSE"
          ? new StoreOpenError(`${path} is in use by another kv server process`)
          : new StoreOpenError(`cannot guard ${path}: ${err.message}`, { cause: err }),
      ),
    );
    guard.listen(`\0kv-lmdb-${dev}-${ino}`, () => resolveListen());
  });
  guard.unref(); // the guard must not keep the process alive
  return guard;
}
