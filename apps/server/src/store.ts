import { MemoryStore, type Store } from "@kv/server";
import type { StoreConfig } from "./config";

/** Opens the store the configuration names. */
export async function openStore(config: StoreConfig): Promise<Store> {
  switch (config.kind) {
    case "memory":
      return new MemoryStore();
  }
}
