import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join, resolve } from "node:path";
import { hasCode, KvError } from "@kv/rpc";
import { KeyWatchers, type PutIfVersionResult, type Store, StoreOpenError, type StoredEntry } from "@kv/server";
import { open, type RootDatabase } from "lmdb";

/** `openLmdbStore`'s options. */
export interface LmdbStoreOptions {
  /** The data directory; created when absent. Its name may contain dots. */
  path: string;
}

/** What one key holds in LMDB; the version is LMDB's own per-entry version. */
interface Record {
  /** The value. */
  v: string;
  /** The put id that wrote this version, when it had one. */
  p?: string;
  /** The key itself, kept only when the LMDB key is its digest (see `lmdbKey`). */
  k?: string;
}

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
  #closed: Promise<void> | undefined;

  private constructor(db: RootDatabase<Record, Buffer>, guard: Server) {
    this.#db = db;
    this.#guard = guard;
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
      return new LmdbStore(db, guard);
    } catch (err) {
      guard.close();
      throw new StoreOpenError(`cannot open the LMDB environment in ${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async get(key: string): Promise<StoredEntry | undefined> {
    this.#assertOpen();
    return this.#read(key);
  }

  async putIfVersion(key: string, value: string, expectedVersion: number, putId: string | undefined): Promise<PutIfVersionResult> {
    this.#assertOpen();
    const lmdb = lmdbKey(key);
    const record: Record = { v: value };
    if (putId !== undefined) record.p = putId;
    if (lmdb[0] === DIGEST_MARK) record.k = key;
    const version = expectedVersion + 1;
    // A put that cannot apply is answered from a read: no write transaction, no sync. Under
    // contention (a lock's waiters racing for a released key) most puts are such puts.
    const before = this.#read(key);
    if ((before?.version ?? 0) !== expectedVersion) return { ok: false, current: before };
    while (true) {
      // Applied in the write transaction only if the entry is at expectedVersion then (absent
      // for 0); resolves once the commit is on disk.
      // lmdb-js takes ifVersion null for "only if absent", though its types say number.
      const ifVersion = (expectedVersion === 0 ? null : expectedVersion) as number;
      if (await this.#db.put(lmdb, record, version, ifVersion)) {
        this.#watchers.notify(key);
        return { ok: true, version };
      }
      // LMDB says only "not applied", not why. Versions only grow and keys are never removed,
      // so an entry read now at another version, or absent, explains the refusal at this very
      // moment. One read back at expectedVersion moved there since: the put may apply now.
      this.#assertOpen(); // closed while the put was committed: the environment is gone
      const current = this.#read(key);
      if (current?.version !== expectedVersion) return { ok: false, current };
    }
  }

  watch(key: string, onChange: () => void): () => void {
    return this.#watchers.add(key, onChange);
  }

  close(): Promise<void> {
    this.#closed ??= this.#db.close().finally(() => this.#guard.close());
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #read(key: string): StoredEntry | undefined {
    const entry = this.#db.getEntry(lmdbKey(key));
    if (entry === undefined) return undefined;
    const { v, p, k } = entry.value;
    if (k !== undefined && k !== key) throw new Error(`SHA-256 collision between two keys: ${JSON.stringify([k, key])}`);
    return p === undefined ? { value: v, version: entry.version as number } : { value: v, version: entry.version as number, putId: p };
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
