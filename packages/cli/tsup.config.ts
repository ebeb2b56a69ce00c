import { defineConfig } from "tsup";

export default defineConfig([
  { entry: ["src/index.ts"], format: ["esm", "cjs"], dts: true, sourcemap: true, target: "node20" },
  // The executable: one ESM file that imports the library build's dependencies.
  { entry: ["src/bin.ts"], format: ["esm"], sourcemap: true, target: "node20", banner: { js: "#!/usr/bin/env node" } },
]);
