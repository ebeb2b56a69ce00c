// Lock throughput over loopback against the built server: 10 contenders, each with its own
// clerk, acquiring and releasing one lock for a fixed time. Prints acquisitions per second and
// the wait (acquire called → held) p50/p99, as one JSON line, next to an uncontended baseline.
import { createClerk } from "@kv/clerk";
import { startServerProcess } from "@kv/testkit";
import { createLock } from "../src/lock";

const MEASURED_MS = Number(process.env.BENCH_SECONDS ?? 10) * 1000;

async function contend(url: string, contenders: number, ms: number) {
  const clerks = Array.from({ length: contenders }, () => createClerk({ endpoints: [url] }));
  const key = `bench-lock-${contenders}-${Date.now()}`;
  const waits: number[] = [];
  const end = performance.now() + ms;
  await Promise.all(
    clerks.map(async (clerk) => {
      const lock = createLock(clerk, key);
      while (performance.now() < end) {
        const asked = performance.now();
        await lock.acquire();
        waits.push(performance.now() - asked);
        await lock.release();
      }
    }),
  );
  await Promise.all(clerks.map((c) => c.close()));
  waits.sort((a, b) => a - b);
  const at = (q: number) => Number((waits[Math.floor(q * (waits.length - 1))] ?? Number.NaN).toFixed(2));
  return { perSecond: Math.round(waits.length / (ms / 1000)), waitP50Ms: at(0.5), waitP99Ms: at(0.99) };
}

const server = await startServerProcess();
try {
  await contend(server.url, 10, 2_000); // warm-up
  const alone = await contend(server.url, 1, MEASURED_MS);
  const ten = await contend(server.url, 10, MEASURED_MS);
  console.log(
    JSON.stringify({
      bench: "lock acquire+release, loopback",
      uncontendedPerSecond: alone.perSecond,
      contenders: 10,
      acquisitionsPerSecond: ten.perSecond,
      ratio: Number((ten.perSecond / alone.perSecond).toFixed(3)),
      waitP50Ms: ten.waitP50Ms,
      waitP99Ms: ten.waitP99Ms,
    }),
  );
} finally {
  await server.stop();
}
