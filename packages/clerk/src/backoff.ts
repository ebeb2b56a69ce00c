import { setTimeout as sleep } from "node:timers/promises";
import type { Clock } from "@kv/rpc";

/** Real time: `performance.now` and Node's timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => sleep(ms, undefined, signal === undefined ? undefined : { signal }),
};

/**
 * The wait before retry `attempt` (from 0): uniform in [0, min(maxMs, baseMs·2^attempt)). Full
 * jitter: clients that failed together do not retry together.
 */
export const backoffMs = (attempt: number, baseMs: number, maxMs: number, random = Math.random): number =>
  random() * Math.min(maxMs, baseMs * 2 ** attempt);
