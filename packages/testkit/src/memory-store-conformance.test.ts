import { MemoryStore } from "@kv/server";
import { describeStoreConformance } from "./store-conformance";

// MemoryStore's run lives here, not in @kv/server: the server's tests cannot import the testkit.
describeStoreConformance("MemoryStore", async (records) => new MemoryStore(records));
