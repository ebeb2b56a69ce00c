import { type GetResult, hasCode, type PutResult } from "@kv/rpc";
import { checkLinearizable } from "./check-linearizable";
import { type Event, formatHistory, type Op } from "./history";
import { createRandom } from "./random";

/** The workload {@link recordHistory} runs: how many clients, how many ops, on which keys, and how. */
export interface RecordHistoryOptions {
  /** How many concurrent clients; client ids are 0 … clients − 1. */
  clients: number;
  /** How many ops each client performs, one after another. */
  opsPerClient: number;
  /** The keys to work on; each op picks one at random. */
  keys: readonly string[];
  /** Chance that an op is a put (default 0.5). */
  putRate?: number;
  /** Draws of op kinds, keys and versions come from this seed. */
  seed: number;
  /** The clock of the run: `performance.now` for real time, `SimNetwork.now` in a simulation. Equal readings are spread apart in order. */
  now: () => number;
  /**
   * Performs one op for one client. A rejection with code `ERR_KV_NO_REPLY` is recorded as an
   * op with no reply; any other rejection fails the run.
   */
  execute: (client: number, op: Op) => Promise<GetResult | PutResult>;
}

/**
 * Runs the clients concurrently, each one op at a time, and returns what they saw. A put names
 * the version its client last saw of the key (sometimes one less, to provoke `ErrVersion`), so
 * most puts have a fair chance to succeed; every put writes a value never written before.
 */
export async function recordHistory(options: RecordHistoryOptions): Promise<Event[]> {
  const { clients, opsPerClient, keys, execute } = options;
  const putRate = options.putRate ?? 0.5;
  const history: Event[] = [];
  // Strictly increasing stamps in the order things happened: a simulated clock stands still
  // within one delivery, and the checker would have to take equal times as concurrent.
  let last = Number.NEGATIVE_INFINITY;
  const now = () => {
    const t = options.now();
    last = t > last ? t : last + Math.max(1e-9, Math.abs(last) * 1e-12);
    return last;
  };
  const client = async (id: number) => {
    const random = createRandom(options.seed * 7919 + id);
    const known = new Map<string, number>();
    for (let i = 0; i < opsPerClient; i++) {
      const key = keys[Math.floor(random() * keys.length)] as string;
      const seen = known.get(key) ?? 0;
      const op: Op =
        random() < putRate
          ? { kind: "put", key, value: `c${id}.${i}`, version: random() < 0.1 ? Math.max(0, seen - 1) : seen }
          : { kind: "get", key };
      const event: Event = { client: id, op, call: now() };
      history.push(event);
      try {
        const output = await execute(id, op);
        event.return = now();
        event.output = output;
        if (output.err === "OK") known.set(key, output.version);
      } catch (err) {
        if (!hasCode(err, "ERR_KV_NO_REPLY")) throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, id) => client(id)));
  return history;
}

/**
 * Checks `history` with `checkLinearizable` and throws unless it is `ok`, with the seed to
 * replay the run (`KV_TEST_SEED=…`), the checker's explanation and an excerpt of the history.
 */
export function assertLinearizable(history: readonly Event[], options: { seed: number; timeoutMs?: number }): void {
  const r = checkLinearizable(history, options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs });
  if (r.result === "ok") return;
  const why = r.result === "illegal" ? r.explanation : "the checker ran out of time";
  throw new Error(
    `history of ${history.length} operations is ${r.result} (replay with KV_TEST_SEED=${options.seed}):\n${why}\n` +
      `history excerpt:\n${formatHistory(history, 10)}`,
  );
}
