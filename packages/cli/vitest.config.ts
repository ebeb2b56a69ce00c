import { defineConfig } from "vitest/config";

// These tests run the built `kv` against real server processes; on a loaded 2-core machine a start can take seconds.
export default defineConfig({ test: { testTimeout: 60_000, hookTimeout: 30_000 } });
