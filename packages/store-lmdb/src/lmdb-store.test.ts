import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
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
    expect(await Promise.all(puts)).toEqual(Array.from({ length: 50 }, () => ({ ok: true, version: 1 })));
    const again = await openLmdbStore({ path });
    for (let i = 0; i < 50; i++) expect(await again.get(`k${i}`)).toEqual({ value: "v", version: 1 });
    await again.close();
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
    expect(await store.putIfVersion("k", "v", 0, "kept")).toEqual({ ok: true, version: 1 });
    await store.close();
    expect(recordsOnDisk(path)).toEqual(["kept"]);

    // Reopened, it knows the record's age: answered from it now, expired after the retention.
    const again = await openLmdbStore({ path, retentionMs: 300 });
    expect(await again.putIfVersion("k", "v", 0, "kept", { isRetry: true })).toEqual({ recorded: { err: "OK", version: 1 } });
    await new Promise((resolve) => setTimeout(resolve, 1_500)); // the retention, and a sweep
    expect(await again.completionRecords()).toBe(0);
    await again.close();
    expect(recordsOnDisk(path)).toEqual([]);
  });
});

describe("openLmdbStore", () => {
  it("creates the directory, dots in its name and all", async () => {
    const path = join(freshDir(), "nested.dir");
    const store = await openLmdbStore({ path });
    expect(await store.putIfVersion("k", "v", 0, undefined)).toEqual({ ok: true, version: 1 });
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
    expect(await store.putIfVersion("k", "v", 0, undefined)).toEqual({ ok: true, version: 1 });
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
