// Writes test-fixtures/format-1: an LMDB directory as kv wrote it before revisions (format 1),
// with the LmdbStore of that kv. Made with commit 91b3fef:
//   git worktree add /tmp/kv-prev 91b3fef && cd /tmp/kv-prev && pnpm install && pnpm --filter @kv/store-lmdb... build
//   node test-fixtures/make-format-1.mjs /tmp/kv-prev test-fixtures/format-1 && rm test-fixtures/format-1/lock.mdb
import { rmSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [checkout, path] = process.argv.slice(2);
const { openLmdbStore } = await import(pathToFileURL(join(checkout, "packages/store-lmdb/dist/index.js")).href);
rmSync(path, { recursive: true, force: true });
const store = await openLmdbStore({ path });
const put = async (key, value, version, id) => {
  const r = await store.putIfVersion(key, value, version, id);
  if (!r.ok) throw new Error(`${key}: ${JSON.stringify(r)}`);
};
await put("greeting", "hello", 0, "put-1");
await put("greeting", "hello again", 1, "put-2"); // its completion record is on disk too
// A test-and-set lock key after 7 writes: its last holder's fencing token was 7.
await put("lock", "__unlocked", 0);
for (let v = 1; v < 7; v++) await put("lock", v % 2 === 1 ? "holder" : "__unlocked", v);
await put("k".repeat(2000), "long key", 0); // stored under its digest
await put("ünïcødé", "✓", 0);
await store.close();
