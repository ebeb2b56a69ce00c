import { spawn } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Store } from "@kv/server";
import { describeStoreConformance } from "@kv/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { open } from "lmdb";
import { LmdbStore, openLmdbStore } from "./lmdb-store";

const root = mkdtempSync(join(tmpdir(), "kv-lmdb-test-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
/** A fresh directory under the test's root; its name has a dot, which lmdb-js must not take for a file. */
const freshDir = () => join(root, `store.${dirs++}`);

const paths = new WeakMap<Store, string>();
describeStoreConformance(
  "LmdbStore",
  async (records) => {
    const path = freshDir();
    const store = await openLmdbStore({ path, ...records });
    paths.set(store, path);
    return store;
  },
  { reopen: (closed) => openLmdbStore({ path: paths.get(closed) as string }) },
);

describe("LmdbStore.close", () => {
  it("lets puts in flight commit before it closes: they are there after a reopen", async () => {
    const path = freshDir();
    const store = await openLmdbStore({ path });
    const puts = Array.from({ length: 50 }, (_, i) => store.putIfVersion(`k${i}`, "v", 0, undefined)); // not awaited
    await store.close();
    expect(await Promise.all(puts)).toEqual(Array.from({ length: 50 }, (_, i) => ({ ok: true, version: 1, revision: i + 1 })));
    const again = await openLmdbStore({ path });
    for (let i = 0; i < 50; i++)
      expect(await again.get(`k${i}`)).toEqual({ value: "v", version: 1, modRevision: i + 1, createRevision: i + 1 });
    // The store revision is as durable as the writes: the next one goes on from it.
    expect(await again.putIfVersion("k0", "w", 1, undefined)).toEqual({ ok: true, version: 2, revision: 51 });
    await again.close();
  });
});

describe("LmdbStore revisions", () => {
  it("goes on from the largest revision after a reopen, also when the write that made it was a delete", async () => {
    const path = freshDir();
    const store = await openLmdbStore({ path });
    expect(await store.putIfVersion("a", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: 1 });
    expect(await store.putIfVersion("b", "v", 0, "with-id")).toEqual({ ok: true, version: 1, revision: 2 });
    expect(await store.putIfVersion("b", "v", 0, undefined)).toMatchObject({ ok: false }); // refused: no revision made
    expect(await store.deleteIfVersion("b", undefined, undefined)).toEqual({ ok: true, revision: 3 });
    await store.close();
    const again = await openLmdbStore({ path });
    expect(await again.putIfVersion("c", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: 4 });
    await again.close();
    const third = await openLmdbStore({ path });
    expect(await third.putIfVersion("d", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: 5 });
    await third.close();
  });
});

describe("LmdbStore completion records", () => {
  /** The ids of completion records on disk (0xFE + when + id), read by lmdb itself. */
  const recordsOnDisk = (path: string) => {
    const env = open({ path, noSubdir: false, useVersions: true, keyEncoding: "binary", encoding: "msgpack", readOnly: true });
    try {
      return [...env.getKeys({ start: Buffer.from([0xfe]), end: Buffer.from([0xff]) })].map((k) => (k as Buffer).toString("utf8", 9));
    } finally {
      void env.close();
    }
  };

  it("keeps a record on disk with its put, and removes it there once it expired", async () => {
    const path = freshDir();
    const store = await openLmdbStore({ path, retentionMs: 300 });
    expect(await store.putIfVersion("k", "v", 0, "kept")).toEqual({ ok: true, version: 1, revision: 1 });
    await store.close();
    expect(recordsOnDisk(path)).toEqual(["kept"]);

    // Reopened, it knows the record's age: answered from it now, expired after the retention.
    const again = await openLmdbStore({ path, retentionMs: 300 });
    expect(await again.putIfVersion("k", "v", 0, "kept", { isRetry: true })).toEqual({ recorded: { err: "OK", version: 1, revision: 1 } });
    await new Promise((resolve) => setTimeout(resolve, 1_500)); // the retention, and a sweep
    expect(await again.completionRecords()).toBe(0);
    await again.close();
    expect(recordsOnDisk(path)).toEqual([]);
  });
});

describe("LmdbStore formats", () => {
  // A directory kv wrote before revisions (see test-fixtures/make-format-1.mjs): versions up to 7.
  const formatOne = () => {
    const path = freshDir();
    cpSync(join(import.meta.dirname, "../test-fixtures/format-1"), path, { recursive: true });
    return path;
  };
  const longKey = "k".repeat(2000);
  const century = 100 * 365 * 24 * 3_600_000; // the fixture's completion records are as old as the fixture

  it("opens a directory written before revisions and serves it as before, with revisions above every version it held", async () => {
    const path = formatOne();
    const store = await openLmdbStore({ path, retentionMs: century });
    // Entries not rewritten since read as made and created at the base revision: the largest version then.
    expect(await store.get("greeting")).toEqual({ value: "hello again", version: 2, modRevision: 7, createRevision: 7, putId: "put-2" });
    expect(await store.get("lock")).toEqual({ value: "__unlocked", version: 7, modRevision: 7, createRevision: 7 });
    expect(await store.get(longKey)).toEqual({ value: "long key", version: 1, modRevision: 7, createRevision: 7 });
    expect(await store.get("ünïcødé")).toMatchObject({ value: "✓", version: 1 });
    // A retry of a put made then is still answered from its completion record.
    expect(await store.putIfVersion("greeting", "hello again", 1, "put-2", { isRetry: true })).toEqual({
      recorded: { err: "OK", version: 2, revision: 7 },
    });
    // The next holder's token (its write's revision) is above the last one handed out (version 7).
    expect(await store.putIfVersion("lock", "next holder", 7, "acquire")).toEqual({ ok: true, version: 8, revision: 8 });
    expect(await store.get("lock")).toEqual({ value: "next holder", version: 8, modRevision: 8, createRevision: 7, putId: "acquire" });
    await store.close();
    // Upgraded once: opened again, it goes on from where it was.
    const again = await openLmdbStore({ path });
    expect(await again.putIfVersion(longKey, "rewritten", 1, undefined)).toEqual({ ok: true, version: 2, revision: 9 });
    expect(await again.get("greeting")).toMatchObject({ version: 2, modRevision: 7 });
    await again.close();
  });

  it("refuses a directory of a newer format with one clear line, and leaves it as it was", async () => {
    const path = freshDir();
    await (await openLmdbStore({ path })).close();
    const raw = open({ path, noSubdir: false, useVersions: true, keyEncoding: "binary", encoding: "msgpack" });
    await raw.put(Buffer.from("\xfdformat", "latin1"), 3 as never);
    await raw.close();
    await expect(openLmdbStore({ path })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: `${path} holds kv data of format 3, newer than this kv reads (2): run a newer kv on it`,
    });
  });
});

describe("openLmdbStore", () => {
  it("creates the directory, dots in its name and all", async () => {
    const path = join(freshDir(), "nested.dir");
    const store = await openLmdbStore({ path });
    expect(await store.putIfVersion("k", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: 1 });
    await store.close();
  });

  it("refuses a file, a directory of other files, and a data.mdb that is not LMDB", async () => {
    const file = join(root, "a-file");
    writeFileSync(file, "not a directory");
    await expect(openLmdbStore({ path: file })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: expect.stringContaining("not a directory"),
    });

    const home = freshDir();
    mkdirSync(home);
    writeFileSync(join(home, "notes.txt"), "mine");
    await expect(openLmdbStore({ path: home })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: expect.stringContaining("no data.mdb"),
    });

    const garbage = freshDir();
    mkdirSync(garbage);
    writeFileSync(join(garbage, "data.mdb"), Buffer.alloc(64 * 1024, 7));
    await expect(openLmdbStore({ path: garbage })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: expect.stringContaining("not an LMDB environment"),
    });

    const under = join(file, "store"); // a file where a directory would have to be made
    await expect(openLmdbStore({ path: under })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: expect.stringContaining(`cannot use ${under}`),
    });
  });

  it("opens a directory that holds only LMDB's lock.mdb, as a crash before the first commit leaves it", async () => {
    const path = freshDir();
    mkdirSync(path);
    writeFileSync(join(path, "lock.mdb"), "");
    const store = await openLmdbStore({ path });
    expect(await store.putIfVersion("k", "v", 0, undefined)).toEqual({ ok: true, version: 1, revision: 1 });
    await store.close();
  });

  it("refuses a directory another process holds, and takes it once that process is killed", async () => {
    const path = freshDir();
    const url = new URL("../dist/index.js", import.meta.url).href;
    const holder = spawn(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import { openLmdbStore } from ${JSON.stringify(url)}; await openLmdbStore({ path: ${JSON.stringify(path)} }); console.log("open"); setInterval(() => {}, 1000);`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    await new Promise<void>((resolve) => holder.stdout.once("data", () => resolve()));
    await expect(openLmdbStore({ path })).rejects.toMatchObject({
      code: "ERR_KV_STORE_OPEN",
      message: expect.stringContaining("in use by another kv server process"),
    });
    holder.kill("SIGKILL");
    await new Promise((resolve) => holder.once("exit", resolve));
    const store = await openLmdbStore({ path });
    expect(await store.get("k")).toBeUndefined();
    await store.close();
  });

  it("refuses a second open of a directory in the same process until the first is closed", async () => {
    const path = freshDir();
    const first = await openLmdbStore({ path });
    await expect(openLmdbStore({ path })).rejects.toMatchObject({ code: "ERR_KV_STORE_OPEN" });
    await first.close();
    const second = await openLmdbStore({ path });
    expect(second).toBeInstanceOf(LmdbStore);
    await second.close();
  });
});
