// The load both HTTP benchmarks put on a server: autocannon, 64 connections, each request a put
// that creates a fresh key (version 0) with a 100-byte value, so every put is an accepted write.
import { kvPath } from "@kv/rpc";
import autocannon from "autocannon";

export const CONNECTIONS = 64;
export const WARMUP_SECONDS = 2;
export const MEASURED_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

/** Runs the load against `url` for `seconds`; throws on any error or non-2xx reply. */
export async function createPuts(url: string, label: string, seconds: number): Promise<autocannon.Result> {
  let n = 0;
  const result = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    requests: [
      {
        method: "PUT",
        headers: { "content-type": "application/json" },
        setupRequest: (req) => ({ ...req, path: kvPath(`${label}-${n++}`), body: JSON.stringify({ value: "v".repeat(100), version: 0 }) }),
      },
    ],
  });
  if (result.errors > 0 || result.non2xx > 0) throw new Error(`${label}: ${result.errors} errors, ${result.non2xx} non-2xx replies`);
  return result;
}
