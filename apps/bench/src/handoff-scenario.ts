import { setMaxListeners } from "node:events";
// S9: how soon a released lock is held again, and what waiting costs the server (issue 9).
// 10 contenders, each its own clerk (as separate processes would be), hold the lock 10 ms each
// time; a handoff is the time from a holder calling release to the next holder's acquire
// resolving, on one clock (this process). Then 100 waiters wait on a lock held 2 s.
import { createClerk } from "@kv/clerk";
import { createLock } from "@kv/lock";
import { withResources } from "./resources";
import type { Figure, ScenarioResult } from "./results";
import type { Settings } from "./settings";
import { cpuSecondsOf, startKv } from "./systems";

const HOLD_MS = 10;
const IDLE_WAITERS = 100;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

export async function s9(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  const figures: Figure[] = [];
  // The same on both stores: the memory store shows the protocol's cost, LMDB adds two syncs per handoff.
  for (const store of ["memory", "lmdb"] as const) {
    for (const f of await handoffs(store, settings)) figures.push({ ...f, label: `${store === "lmdb" ? "LMDB" : "memory"}: ${f.label}` });
  }
  return {
    id: "S9",
    title: `lock handoff: ${settings.handoffContenders} contenders, ${settings.handoffs} handoffs, each hold ${HOLD_MS} ms; then ${IDLE_WAITERS} waiters on a held lock; @kv/lock on kv`,
    measures: "handoff: release called → the next holder's acquire resolved",
    systems: [],
    figures,
    ratios: [],
  };
}

async function handoffs(store: "memory" | "lmdb", settings: Settings): Promise<Figure[]> {
  const contenders = settings.handoffContenders;
  const handoffs = settings.handoffs;
  return withResources(async (r) => {
    const kv = r.add(await startKv(store), (s) => s.stop());
    const locks = Array.from({ length: contenders }, () =>
      createLock(
        r.add(createClerk({ endpoints: [kv.url] }), (c) => c.close()),
        "s9-lock",
      ),
    );
    const latencies: number[] = [];
    let releasedAt: number | undefined;
    let acquisitions = 0;
    const serverCpu = () => kv.pids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0);
    const cpuBefore = serverCpu();
    const started = performance.now();
    await Promise.all(
      locks.map(async (lock) => {
        // Every contender acquires once more after the last handoff is counted: bounded.
        while (acquisitions <= handoffs) {
          await lock.acquire();
          if (releasedAt !== undefined) latencies.push(performance.now() - releasedAt);
          acquisitions++;
          await sleep(HOLD_MS);
          releasedAt = performance.now();
          await lock.release();
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const serverCores = (serverCpu() - cpuBefore) / seconds;

    // Waiting: one holder, 100 waiters, nothing changes for 2 s.
    const holder = locks[0] as (typeof locks)[number];
    await holder.acquire();
    const stopWaiting = new AbortController();
    setMaxListeners(0, stopWaiting.signal); // shared by the 100 waiters
    const waiters = Array.from({ length: IDLE_WAITERS }, () =>
      createLock(
        r.add(createClerk({ endpoints: [kv.url] }), (c) => c.close()),
        "s9-lock",
      )
        .acquire({ signal: stopWaiting.signal })
        .catch(() => undefined),
    );
    await sleep(500); // every waiter has read the key and waits
    const idleCpuBefore = serverCpu();
    await sleep(settings.idleWaitMs);
    const idleCores = (serverCpu() - idleCpuBefore) / (settings.idleWaitMs / 1000);
    stopWaiting.abort();
    await Promise.all(waiters);
    await holder.release();
    const measured = latencies.slice(0, handoffs).sort((a, b) => a - b);
    return [
      { label: "handoff p50", value: percentile(measured, 50), unit: "ms" },
      { label: "handoff p99", value: percentile(measured, 99), unit: "ms" },
      { label: "handoff max", value: measured.at(-1) ?? Number.NaN, unit: "ms" },
      { label: "acquisitions per second", value: acquisitions / seconds, unit: "/s" },
      { label: "server CPU per acquisition", value: (serverCores * 1e6) / (acquisitions / seconds), unit: "µs" },
      { label: `server CPU, ${IDLE_WAITERS} waiting ${settings.idleWaitMs / 1000} s`, value: idleCores * 100, unit: "% of a core" },
    ];
  });
}
