import { defineConfig } from "vitest/config";

// Durable commits wait for the disk; on a loaded 2-core machine a suite of them takes seconds.
export default defineConfig({ test: { testTimeout: 30_000, hookTimeout: 30_000 } });
