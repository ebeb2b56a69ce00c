// The run's figures three ways: a plain-text table for stdout, markdown for BENCHMARKS.md, and
// (in main.ts) the JSON file. All three come from the same ScenarioResult values.
import type { Machine } from "./machine";
import { describeGoal, type Figure, isMet, type Ratio, type ScenarioResult } from "./results";
import type { Settings } from "./settings";

const opsFormat = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const ops = (n: number) => opsFormat.format(n).replaceAll(",", " ");
const ms = (n: number) => (n < 10 ? n.toFixed(2) : n.toFixed(1));
const cores = (n: number) => n.toFixed(2);
const ratio = (n: number) => (Math.abs(n) >= 100 ? n.toFixed(0) : n.toFixed(2));

function verdict(r: Ratio): string {
  return r.goal === undefined ? "" : `goal ${describeGoal(r.goal)}: ${isMet(r.value, r.goal) ? "met" : "NOT met"}`;
}

function row(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join("  ");
}

/** One scenario as indented plain text. */
export function formatScenario(s: ScenarioResult): string {
  const lines = [`${s.id}  ${s.title}  (${s.seconds.toFixed(0)} s)`];
  if (s.measures !== undefined) lines.push(`    (${s.measures})`);
  if (s.systems.length > 0) {
    const widths = [Math.max(18, ...s.systems.map((f) => f.name.length)), 9, 8, 8, 11, 10, 10, 13];
    lines.push(
      `    ${row(["system", "ops/s", "p50 ms", "p99 ms", "server CPU", "bench CPU", "other CPU", "server µs/op"], widths)}   ops/s by round`,
    );
    for (const f of s.systems) {
      const cells = [
        f.name,
        ops(f.opsPerSec),
        ms(f.p50Ms),
        ms(f.p99Ms),
        cores(f.serverCores),
        cores(f.clientCores),
        cores(f.otherCores),
        ops(f.serverCpuUsPerOp),
      ];
      lines.push(`    ${row(cells, widths)}   ${f.opsPerSecByRound.map(ops).join(" · ")}`);
    }
  }
  for (const f of s.figures) lines.push(`    ${f.label.padEnd(50)} ${figure(f)} ${f.unit}`);
  for (const r of s.ratios) lines.push(`    ${r.label.padEnd(50)} ${ratio(r.value).padStart(7)}   ${verdict(r)}`);
  return lines.join("\n");
}

/** Every goal of the issue's item 4, measured: informational, never an assertion. */
export function formatGoals(scenarios: readonly ScenarioResult[]): string {
  const lines = ["Goals (issue 8, item 4; the team's targets, not assertions):"];
  for (const s of scenarios) {
    for (const r of s.ratios) {
      if (r.goal !== undefined) lines.push(`    ${s.id}  ${r.label.padEnd(50)} ${ratio(r.value).padStart(7)}   ${verdict(r)}`);
    }
  }
  return lines.join("\n");
}

function markdownScenario(s: ScenarioResult): string {
  const lines = [`### ${s.id} — ${s.title}`, ""];
  if (s.measures !== undefined) lines.push(`Figures: ${s.measures}.`, "");
  if (s.systems.length > 0) {
    lines.push(
      "| system | ops/s (median) | p50 ms | p99 ms | server CPU (cores) | bench CPU (cores) | other CPU (cores) | server CPU µs/op | ops/s by round |",
      "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    );
    for (const f of s.systems) {
      lines.push(
        `| ${f.name} | ${ops(f.opsPerSec)} | ${ms(f.p50Ms)} | ${ms(f.p99Ms)} | ${cores(f.serverCores)} | ${cores(f.clientCores)} | ${cores(f.otherCores)} | ${ops(f.serverCpuUsPerOp)} | ${f.opsPerSecByRound.map(ops).join(" · ")} |`,
      );
    }
    lines.push("");
  }
  if (s.figures.length > 0) {
    lines.push("| figure | value |", "|---|--:|");
    for (const f of s.figures) lines.push(`| ${f.label} | ${figure(f)} ${f.unit} |`);
    lines.push("");
  }
  lines.push("| ratio | measured | goal |", "|---|--:|---|");
  for (const r of s.ratios)
    lines.push(
      `| ${r.label} | ${ratio(r.value)} | ${r.goal === undefined ? "—" : `${describeGoal(r.goal)}: ${isMet(r.value, r.goal) ? "met" : "**not met**"}`} |`,
    );
  return lines.join("\n");
}

/** BENCHMARKS.md: the machine, how to reproduce, the goals, every scenario's table. */
export function formatMarkdown(run: {
  startedAt: string;
  seconds: number;
  machine: Machine;
  settings: Settings;
  scenarios: readonly ScenarioResult[];
}): string {
  const { machine, settings, scenarios } = run;
  const goals = scenarios.flatMap((s) =>
    s.ratios.flatMap((r) =>
      r.goal === undefined
        ? []
        : [`| ${s.id} | ${r.label} | ${ratio(r.value)} | ${describeGoal(r.goal)} | ${isMet(r.value, r.goal) ? "met" : "**not met**"} |`],
    ),
  );
  return `# Benchmarks

kv against the systems a user would pick instead — etcd, Redis, and a bare Fastify route (the
ceiling of kv's HTTP stack) — on one machine, in one run. Written by the last full run of
\`pnpm bench\` (${run.startedAt}, ${Math.round(run.seconds)} s); the figures are that run's, not edited.

## Machine

| | |
|---|---|
| CPUs (\`nproc\`) | ${machine.nproc} |
| CPU model | ${machine.cpuModel} |
| kernel | ${machine.kernel} |
| Node | ${machine.node} |
| etcd | ${machine.etcd} (Debian's etcd-server) |
| Redis | ${machine.redis} (Debian's redis-server) |

\`\`\`
$ free -h
${machine.memory}
\`\`\`

## Reproduce

\`\`\`sh
npx -y pnpm@10.34.8 install
npx -y pnpm@10.34.8 bench            # the full run (about ${Math.ceil(run.seconds / 60)} minutes): prints the tables, writes this file and apps/bench/results/latest.json
npx -y pnpm@10.34.8 bench --quick    # every scenario in under a minute (CI runs it); writes apps/bench/results/latest-quick.json only
\`\`\`

It needs \`etcd\` (3.4, Debian's \`etcd-server\`) and \`redis-server\` on PATH:
\`node scripts/ensure-test-deps.mjs --bench\` installs them with apt-get when run as root.
\`--only S1,S5\` runs some scenarios (and leaves this file alone); \`--out <file>\` moves the JSON.

## Method

- Every system is a process of its own on 127.0.0.1, started by the suite for the scenario and
  stopped after it: kv's built server (\`apps/server/dist/main.js\`) on the memory, LMDB (a temp
  directory) or etcd store; etcd, one member, data in a temp directory; \`redis-server\` with no
  persistence (\`--save "" --appendonly no\`); a bare Fastify PUT/GET route over a \`Map\`
  (\`apps/bench/src/bare-fastify.mjs\`: no validation, hooks, logger or limits).
- One load generator, the bench process: ${settings.workers} workers (S3: 1; S5: ${settings.lockContenders} contenders), each one
  operation at a time. kv and bare Fastify through an undici \`Pool\` (one connection per worker,
  no pipelining) with the clerk's bodies \`{ value, version, id }\`; etcd through \`etcd3\` (one
  gRPC channel) with the transaction \`if (Version == v) then put\`; Redis through \`ioredis\` (one
  connection) with a Lua compare-and-set over a hash (\`defineCommand\`).
- etcd3 (gRPC in JavaScript: grpc-js over http2, protobufjs) costs the bench process far more
  CPU per operation than undici or ioredis (see "bench CPU"): with 64 workers the etcd rows are
  bounded by the client at about one core while etcd itself has CPU to spare. They are etcd as
  a Node program sees it — what a kv user would otherwise run — not etcd's own ceiling. The same
  client is inside kv's etcd store (S6).
- Conditional puts: ${settings.keys} keys split among the workers; each worker knows its keys' versions,
  so every put names the current version and succeeds on every system. Values are 100 bytes.
  Every reply is checked: a put not applied, or a read not at the version written, stops the run.
- Each system is warmed up (${settings.warmupMs / 1000} s), then ${settings.rounds} rounds of ${settings.roundMs / 1000} s interleave the systems of a
  scenario (A B C A B C …). ops/s is the median over rounds; p50/p99 are over every measured
  operation.
- CPU columns are cores busy on average during the measured rounds (1.00 = one core), from
  /proc: the server's processes (kv on etcd counts both), the bench process, and the rest of the
  machine ("other": idle systems, kernel threads such as the file system's journal after
  fsyncs, anything else running). On ${machine.nproc} cores the load generator
  competes with the server it measures, and whichever runs out of CPU first sets ops/s: compare
  ratios within a scenario, not absolute figures across runs. "server µs/op" (server CPU per
  operation) is what each server costs per request, whoever limited the throughput.
- Run to run on a shared ${machine.nproc}-core VM, a ratio can move by 20 % or more even with interleaved
  rounds: read a goal within that distance of its target as undecided, and rerun.
- S5: ${settings.lockContenders} contenders, each with its own client, acquire → release, ${settings.lockAcquisitions} acquisitions each per
  round; ops/s are handoffs/s, p50/p99 the wait from \`acquire()\` called to held. kv uses
  \`@kv/lock\` on the LMDB store. etcd3's \`lock(key).acquire()\` is a try-lock (it rejects
  \`EtcdLockFailedError\` while held), so its contenders retry on @kv/lock's own schedule (random
  wait up to 5 ms, doubling to 250 ms).
- S9: ${settings.handoffContenders} contenders, each with its own client, pass \`@kv/lock\` around (memory store, then LMDB),
  holding it 10 ms each time; a handoff is the time from a holder calling \`release()\` to the next
  holder's \`acquire()\` resolving, ${settings.handoffs} handoffs, on the bench process's clock; then the server's CPU while 100 more contenders wait on a held lock (2 s; quick: 0.5 s).
- S8: a kv server on the memory store, run with \`--inspect\` on a loopback port so the suite can
  force a full GC (\`HeapProfiler.collectGarbage\`) before reading RSS (\`VmRSS\`): RSS before a GC
  is mostly garbage not collected yet. After a warm-up, RSS before and after loading the keys
  (puts with put ids, which the store keeps); then the clients: each client a new connection
  (\`Connection: close\`) making one put that updates one of the loaded keys in place, so the data
  does not grow and any growth would be state kept per client. The first tenth of the clients
  settles what grows with concurrent connections (allocator arenas, socket buffers); "flat" is
  judged on RSS over the other nine tenths. That server keeps completion records for 0.5 s and is
  sampled once they expired. A second one keeps them ${settings.recordRetentionMs / 1000} s and takes ${settings.recordPuts.toLocaleString("en")} puts with ids at full
  speed on 10 000 keys updated in place: RSS per record is its growth over the records it keeps
  then; what it keeps is bounded by one retention window of puts.
- S10: the same durable conditional puts through raw HTTP with a fresh put id each (so the server
  writes a completion record in the same commit) and without one, to kv on LMDB and to kv on one
  etcd member.

## Goals

The team's targets (issue 8); informational, not assertions.

| scenario | figure | measured | goal | |
|---|---|--:|---|---|
${goals.join("\n")}

## Results

${scenarios.map(markdownScenario).join("\n\n")}
`;
}

/** MiB and ms with one decimal; counts as whole numbers. */
function figure(f: Figure): string {
  return f.unit === "MiB" || f.unit === "ms" ? f.value.toFixed(1) : ops(f.value);
}
