// How long checkLinearizable takes on the histories the tests make: 10 000 ops over 100 keys,
// and 2 000 ops from 20 concurrent clients on one key, both recorded over the simulated network
// at 20 % loss each way. Prints one JSON line per history.
import { KVServer, MemoryStore } from "@kv/server";
import { checkLinearizable } from "../src/check-linearizable";
import { recordHistory } from "../src/record-history";
import { SimNetwork } from "../src/sim-network";

async function simulated(clients: number, opsPerClient: number, keyCount: number, seed: number) {
  const net = new SimNetwork(new KVServer(new MemoryStore()), { seed, requestLoss: 0.2, replyLoss: 0.2, longDelayRate: 0.05 });
  const transports = Array.from({ length: clients }, (_, c) => net.transport(c));
  return recordHistory({
    clients,
    opsPerClient,
    keys: Array.from({ length: keyCount }, (_, i) => `key-${i}`),
    seed,
    now: () => net.now(),
    execute: (c, op) => {
      const t = transports[c] as (typeof transports)[number];
      return op.kind === "get" ? t.get(op.key) : t.put({ key: op.key, value: op.value, version: op.version });
    },
  });
}

const cases = [
  { name: "10 000 ops, 100 keys, 50 clients", clients: 50, opsPerClient: 200, keys: 100 },
  { name: "2 000 ops, 1 key, 20 clients", clients: 20, opsPerClient: 100, keys: 1 },
];
for (const c of cases) {
  const times: number[] = [];
  let result = "";
  for (let seed = 1; seed <= 5; seed++) {
    const history = await simulated(c.clients, c.opsPerClient, c.keys, seed);
    const start = performance.now();
    result = checkLinearizable(history, { timeoutMs: 60_000 }).result;
    times.push(performance.now() - start);
    if (result !== "ok") throw new Error(`${c.name}, seed ${seed}: ${result}`);
  }
  times.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      bench: `checkLinearizable: ${c.name}`,
      runs: times.length,
      medianMs: Number(times[2]?.toFixed(1)),
      maxMs: Number(times[4]?.toFixed(1)),
      result,
    }),
  );
}
