// `pnpm bench`: kv against etcd, Redis and a bare Fastify route, side by side in one run
// (issue 8). Prints each scenario's table as it finishes, then the goals; writes the JSON file,
// and after a full run of every scenario, BENCHMARKS.md. Exits 1 on any error — never on a
// goal missed.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { s5 } from "./lock-scenario";
import { s9 } from "./handoff-scenario";
import { describeMachine } from "./machine";
import { s8 } from "./memory-scenario";
import { formatGoals, formatMarkdown, formatScenario } from "./report";
import type { ScenarioResult } from "./results";
import { parseSettings, type Settings } from "./settings";
import { assertInstalled } from "./systems";
import { s1, s2, s3, s4, s6, s7, s10 } from "./throughput-scenarios";

const SCENARIOS: Record<string, (settings: Settings) => Promise<Omit<ScenarioResult, "seconds">>> = {
  S1: s1,
  S2: s2,
  S3: s3,
  S4: s4,
  S5: s5,
  S6: s6,
  S7: s7,
  S8: s8,
  S9: s9,
  S10: s10,
};

const settings = parseSettings(process.argv.slice(2));
for (const id of settings.only ?? [])
  if (!(id in SCENARIOS)) throw new TypeError(`--only: no scenario ${id} (there are ${Object.keys(SCENARIOS).join(", ")})`);
assertInstalled();
const machine = describeMachine();
const startedAt = new Date().toISOString();
const t0 = performance.now();
console.log(
  `kv bench, ${settings.mode} run: ${machine.nproc} × ${machine.cpuModel}, Node ${machine.node}, etcd ${machine.etcd}, Redis ${machine.redis}\n` +
    `${settings.workers} workers; warm-up ${settings.warmupMs} ms, then ${settings.rounds} interleaved rounds of ${settings.roundMs} ms per system\n` +
    (settings.mode === "quick"
      ? "quick: short rounds on a cold JIT show that every scenario runs, not how fast anything is; the full run measures\n"
      : ""),
);

const scenarios: ScenarioResult[] = [];
for (const [id, run] of Object.entries(SCENARIOS)) {
  if (settings.only !== undefined && !settings.only.has(id)) continue;
  const started = performance.now();
  const result = { ...(await run(settings)), seconds: (performance.now() - started) / 1000 };
  scenarios.push(result);
  console.log(`${formatScenario(result)}\n`);
}
const seconds = (performance.now() - t0) / 1000;
console.log(formatGoals(scenarios));

const run = {
  suite: "kv bench (issue 8)",
  mode: settings.mode,
  startedAt,
  seconds,
  machine,
  settings: { ...settings, only: settings.only && [...settings.only] },
  scenarios,
};
mkdirSync(dirname(settings.outPath), { recursive: true });
writeFileSync(settings.outPath, `${JSON.stringify(run, null, 2)}\n`);
console.log(`\n${settings.mode} run: ${seconds.toFixed(0)} s; results in ${settings.outPath}`);
if (settings.markdownPath !== undefined) {
  writeFileSync(settings.markdownPath, formatMarkdown({ startedAt, seconds, machine, settings, scenarios }));
  console.log(`table in ${settings.markdownPath}`);
}
// Every system and client of ours is closed by now, but etcd3's leases (S5's lock) can leave
// keep-alive timers behind that hold the process for up to the lease TTL (30 s): exit now.
process.exit(0);
