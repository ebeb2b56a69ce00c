import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

/** How long and how hard the suite measures; `--quick` shrinks every figure, never the method. */
export interface Settings {
  readonly mode: "full" | "quick";
  /** Scenario ids to run (`--only S1,S3`); every one when absent. */
  readonly only: ReadonlySet<string> | undefined;
  /** Where the JSON results go. */
  readonly outPath: string;
  /**
   * `--baseline <checkout>`: another build of kv (e.g. a worktree of main) measured beside this
   * one — its server (`apps/server/dist/main.js`) in S1–S4, its clerk
   * (`packages/clerk/dist/index.js`) in S7 — so a change to a hot path is judged before and
   * after in one run.
   */
  readonly baseline: { serverEntry: string; clerkEntry: string } | undefined;
  /** Where the full run writes its table (BENCHMARKS.md at the workspace root); undefined: nowhere. */
  readonly markdownPath: string | undefined;
  /** Each system, once, before the measured rounds. */
  readonly warmupMs: number;
  /** One system's share of a round. */
  readonly roundMs: number;
  readonly rounds: number;
  /** S1, S2, S4, S6, S7: concurrent workers, each one operation at a time. */
  readonly workers: number;
  /** Keys of the conditional-put and read workloads, partitioned among the workers. */
  readonly keys: number;
  readonly lockContenders: number;
  /** Acquisitions per contender per round (S5). */
  readonly lockAcquisitions: number;
  /** S9: contenders passing one lock, and the handoffs measured. */
  readonly handoffContenders: number;
  readonly handoffs: number;
  /** S9: how long 100 waiters wait on a held lock while the server's CPU is measured. */
  readonly idleWaitMs: number;
  /** S8: keys of 100-byte values loaded into one server. */
  readonly memoryKeys: number;
  /** S8: distinct clients, each one new connection and one put. */
  readonly memoryClients: number;
  /** S8: puts with ids at full speed, and how long their completion records are kept meanwhile. */
  readonly recordPuts: number;
  readonly recordRetentionMs: number;
  /** S8: the pause before RSS is read, for the server to finish what the load left (GC). */
  readonly settleMs: number;
}

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE_ROOT = resolve(HERE, "..");

/** The workspace root: the first directory above this package with `pnpm-workspace.yaml`. */
function workspaceRoot(): string {
  for (let dir = PACKAGE_ROOT; dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, "pnpm-workspace.yaml"))) return dir;
  }
  throw new Error(`no pnpm-workspace.yaml above ${PACKAGE_ROOT}`);
}

/**
 * Reads `--quick`, `--out <file>`, `--only <S1,S2…>` and `--baseline <checkout>` (a `--` that
 * pnpm or turbo passes on is skipped). Throws a `TypeError` naming an unknown flag. Only a full
 * run of every scenario without a baseline writes BENCHMARKS.md: no other table may replace the
 * published one.
 */
export function parseSettings(argv: readonly string[]): Settings {
  const { values } = parseArgs({
    args: argv.filter((a) => a !== "--"),
    options: {
      quick: { type: "boolean", default: false },
      out: { type: "string" },
      only: { type: "string" },
      baseline: { type: "string" },
    },
  });
  // pnpm runs scripts in the package's folder; INIT_CWD is where the command was typed.
  const typedFrom = process.env.INIT_CWD ?? process.cwd();
  const baselineRoot = values.baseline === undefined ? undefined : resolve(typedFrom, values.baseline);
  const baseline =
    baselineRoot === undefined
      ? undefined
      : {
          serverEntry: join(baselineRoot, "apps", "server", "dist", "main.js"),
          clerkEntry: join(baselineRoot, "packages", "clerk", "dist", "index.js"),
        };
  for (const entry of baseline === undefined ? [] : [baseline.serverEntry, baseline.clerkEntry]) {
    if (!existsSync(entry)) throw new TypeError(`--baseline: ${entry} does not exist (build that checkout first)`);
  }
  const quick = values.quick === true;
  const only = values.only === undefined ? undefined : new Set(values.only.split(",").map((s) => s.trim().toUpperCase()));
  const defaultOut = join(PACKAGE_ROOT, "results", quick ? "latest-quick.json" : "latest.json");
  const shape = quick
    ? {
        warmupMs: 300,
        roundMs: 150,
        rounds: 5,
        lockAcquisitions: 5,
        memoryKeys: 20_000,
        memoryClients: 2_000,
        settleMs: 500,
        recordPuts: 20_000,
        recordRetentionMs: 2_000,
      }
    : {
        warmupMs: 2_000,
        roundMs: 3_000,
        rounds: 5,
        lockAcquisitions: 100,
        memoryKeys: 1_000_000,
        memoryClients: 100_000,
        settleMs: 2_000,
        recordPuts: 1_000_000,
        recordRetentionMs: 20_000,
      };
  return {
    mode: quick ? "quick" : "full",
    only,
    outPath: values.out === undefined ? defaultOut : resolve(typedFrom, values.out),
    baseline,
    markdownPath: quick || only !== undefined || baseline !== undefined ? undefined : join(workspaceRoot(), "BENCHMARKS.md"),
    workers: 64,
    keys: 1_000,
    lockContenders: 8,
    handoffContenders: 10,
    handoffs: quick ? 50 : 200,
    idleWaitMs: quick ? 500 : 2_000,
    ...shape,
  };
}
