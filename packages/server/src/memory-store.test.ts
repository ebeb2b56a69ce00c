import { describe, expect, it } from "vitest";
import { MemoryStore } from "./memory-store";

describe("MemoryStore.putIfVersion", () => {
  it("creates an absent key only when the expected version is 0", async () => {
    const store = new MemoryStore();
    expect(await store.putIfVersion("k", "v", 1, undefined)).toEqual({ ok: false, current: undefined });
    expect(await store.putIfVersion("k", "v", 0, "id")).toEqual({ ok: true, version: 1, revision: 1 });
    expect(await store.get("k")).toEqual({ value: "v", version: 1, modRevision: 1, createRevision: 1, putId: "id" });
  });

  it("refuses a mismatched version and reports the entry it found", async () => {
    const store = new MemoryStore();
    await store.putIfVersion("k", "v", 0, "id");
    expect(await store.putIfVersion("k", "w", 0, "other")).toEqual({
      ok: false,
      current: { value: "v", version: 1, modRevision: 1, createRevision: 1, putId: "id" },
    });
  });

  it("drops the previous put id when a put without one replaces the value", async () => {
    const store = new MemoryStore();
    await store.putIfVersion("k", "v", 0, "id");
    await store.putIfVersion("k", "w", 1, undefined);
    expect(await store.get("k")).toEqual({ value: "w", version: 2, modRevision: 2, createRevision: 1 });
  });
});

describe("MemoryStore.close", () => {
  it("makes later calls reject with ERR_KV_CLOSED, and may be called twice", async () => {
    const store = new MemoryStore();
    await store.close();
    await store.close();
    await expect(store.get("k")).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
    await expect(store.putIfVersion("k", "v", 0, undefined)).rejects.toMatchObject({ code: "ERR_KV_CLOSED" });
  });
});
