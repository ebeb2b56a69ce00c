import type { GetResult, PutResult } from "@kv/rpc";

/** One operation of a history (contract §6). */
export type Op = { kind: "get"; key: string } | { kind: "put"; key: string; value: string; version: number };

/**
 * One operation as a client saw it. A client's own events never overlap in time: an answered
 * event returns strictly before the client's next call (`checkLinearizable` throws otherwise).
 * - `return` and `output` present: the op took effect between `call` and `return`.
 * - output `ErrMaybe`: a put that took effect at one moment between `call` and `return`, applied
 *   exactly when the key's version matched then; only its result is unknown.
 * - no `return`: the op took effect at one moment after `call`, or never.
 */
export interface Event {
  client: number;
  op: Op;
  call: number;
  return?: number;
  output?: GetResult | PutResult;
}

/** One line per event, for failure messages: `c3 put(k,"v",2) → ErrVersion [12.0, 15.3]`. */
export function formatEvent(e: Event): string {
  const op =
    e.op.kind === "get"
      ? `get(${JSON.stringify(e.op.key)})`
      : `put(${JSON.stringify(e.op.key)},${JSON.stringify(e.op.value)},${e.op.version})`;
  const out = e.output === undefined ? "no reply" : formatOutput(e.output);
  const span = `[${e.call.toFixed(1)}, ${e.return === undefined ? "∞" : e.return.toFixed(1)}]`;
  return `c${e.client} ${op} → ${out} ${span}`;
}

function formatOutput(o: GetResult | PutResult): string {
  if (o.err !== "OK") return o.err;
  return "value" in o ? `OK ${JSON.stringify(o.value)}@${o.version}` : `OK @${o.version}`;
}

/** The first and last `limit / 2` events, for a short excerpt of a long history. */
export function formatHistory(history: readonly Event[], limit = 20): string {
  const sorted = [...history].sort((a, b) => a.call - b.call);
  if (sorted.length <= limit) return sorted.map(formatEvent).join("\n");
  const half = Math.floor(limit / 2);
  return [...sorted.slice(0, half).map(formatEvent), `… ${sorted.length - 2 * half} more …`, ...sorted.slice(-half).map(formatEvent)].join(
    "\n",
  );
}
