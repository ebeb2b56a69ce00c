import { setMaxListeners } from "node:events";
import type { GetResult } from "@kv/rpc";
import type { FastifyReply } from "fastify";
import type { Metrics } from "./metrics";
import { refuse } from "./replies";

/**
 * The long-poll reads waiting now (contract §4, `?waitVersion&waitMs`). A waiting read holds a
 * socket and a timer, no CPU, and is not counted against KV_MAX_IN_FLIGHT: it is capped here
 * instead (KV_MAX_WAITERS; past it 503). It ends when its key changes, its time is up, its
 * client leaves, or the server closes — then at once, with the state then.
 */
export class Waiters {
  readonly #max: number;
  readonly #metrics: Metrics;
  readonly #closing = new AbortController();
  #count = 0;

  constructor(max: number, metrics: Metrics) {
    this.#max = max;
    this.#metrics = metrics;
    setMaxListeners(0, this.#closing.signal); // one listener per waiter, by design
  }

  /** Runs `read` as one waiter, or refuses `reply` 503 and resolves undefined when too many wait. */
  async wait(reply: FastifyReply, read: (signal: AbortSignal) => Promise<GetResult>): Promise<GetResult | undefined> {
    if (this.#count >= this.#max) {
      this.#metrics.overloadRejections.inc({ reason: "waiters" });
      refuse(reply.header("retry-after", "1"), "ErrUnavailable", `overloaded: ${this.#count} long-poll reads waiting`);
      return undefined;
    }
    const ended = new AbortController();
    const end = () => ended.abort();
    // Closing already, or the client gone already: the events below have fired; answer at once.
    if (this.#closing.signal.aborted || reply.raw.destroyed) end();
    this.#closing.signal.addEventListener("abort", end);
    reply.raw.on("close", end); // the client left: stop waiting for it
    this.#count++;
    this.#metrics.waiters.inc();
    try {
      return await read(ended.signal);
    } finally {
      this.#count--;
      this.#metrics.waiters.dec();
      this.#closing.signal.removeEventListener("abort", end);
    }
  }

  /** Ends every wait now (the server is closing): each is answered with the state then. */
  endAll(): void {
    this.#closing.abort();
  }
}
