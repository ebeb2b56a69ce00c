import { defineConfig } from "tsup";

// The app is run, not imported: ESM only, no declarations.
export default defineConfig({
  entry: ["src/main.ts"],
  format: ["esm"],
  sourcemap: true,
  clean: true,
  target: "node20",
});
