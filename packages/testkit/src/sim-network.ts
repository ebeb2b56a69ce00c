import type { DeleteRequest, DeleteResult, GetResult, PutRequest, PutResult, Transport, TransportCallOptions, WaitOptions } from "@kv/rpc";
import { KvError, NetworkError } from "@kv/rpc";
import { createRandom } from "./random";

/** What the simulated network connects clients to: a KVServer, or anything shaped like one. */
export interface SimServer {
  get(key: string): Promise<GetResult>;
  put(key: string, value: string, version: number, id?: string, options?: { isRetry?: boolean }): Promise<PutResult>;
  /** A server without it answers every delete 400. */
  delete?(key: string, version?: number, id?: string, options?: { isRetry?: boolean }): Promise<DeleteResult>;
  /** Whether it keeps completion records (a `KVServer` says so of its store); its transports tell their clerks. */
  readonly keepsCompletionRecords?: boolean;
}

/** The fault and delay settings of a {@link SimNetwork}; `setFaults` changes them mid-run. */
export interface SimFaults {
  /** Chance that a request is lost on its way to the server (0–1). */
  requestLoss: number;
  /** Chance that a reply is lost on its way back, after the server acted (0–1). */
  replyLoss: number;
  /** Each message takes a delay drawn uniformly from [minDelayMs, maxDelayMs] (default [0, 5] virtual ms)… */
  minDelayMs: number;
  maxDelayMs: number;
  /** …or, with this chance, one drawn from [0, longDelayMs]: late messages overtake and arrive after their sender gave up. */
  longDelayRate: number;
  longDelayMs: number;
}

/** A {@link SimNetwork}'s seed, reply timeout and first fault settings (no loss by default). */
export interface SimNetworkOptions extends Partial<SimFaults> {
  /** Every fault and delay is drawn from this seed: the same seed replays the same run. */
  seed: number;
  /** How long a transport waits for a reply before its call rejects `NetworkError` (virtual ms), unless the call gives its own `timeoutMs`. */
  replyTimeoutMs?: number;
}

/** What a {@link SimNetwork} has done so far. */
export interface SimStats {
  /** Calls made through its transports. */
  requests: number;
  /** Requests lost to `requestLoss`. */
  lostRequests: number;
  /** Replies lost to `replyLoss`, after the server acted. */
  lostReplies: number;
  /** Messages lost because their client was cut off by `partition`. */
  partitioned: number;
  /** Calls that rejected `NetworkError` for want of a reply. */
  timeouts: number;
}

/** The virtual clock every participant of a simulation must use instead of timers. */
export interface SimClock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** A long-poll read the server holds: it is read again after every put the network delivers, and at its deadline. */
interface Parked {
  recheck: (isFinal: boolean) => void;
}

interface Scheduled {
  time: number;
  seq: number;
  run: () => void;
  isCancelled: boolean;
}

const DEFAULT_FAULTS: SimFaults = {
  requestLoss: 0,
  replyLoss: 0,
  minDelayMs: 0,
  maxDelayMs: 5,
  longDelayRate: 0,
  longDelayMs: 200,
};
const DEFAULT_REPLY_TIMEOUT_MS = 100;

/**
 * An unreliable network between clients and one in-process server, run in virtual time: every
 * message is an event in one queue, delivered in order of its time, one event per macrotask, so
 * each delivery's consequences settle before the next. Faults and delays come from a seeded
 * generator, so a run is a function of its seed — as long as the clients wait only through
 * `transport(…)` and `clock`, never on real timers.
 */
export class SimNetwork implements SimClock {
  readonly seed: number;
  readonly stats: SimStats = { requests: 0, lostRequests: 0, lostReplies: 0, partitioned: 0, timeouts: 0 };
  readonly #server: SimServer;
  readonly #random: () => number;
  readonly #replyTimeoutMs: number;
  #faults: SimFaults;
  readonly #cutOff = new Set<number>();
  readonly #queue: Scheduled[] = [];
  readonly #parked = new Set<Parked>();
  #seq = 0;
  #now = 0;
  #serverCallsInFlight = 0;
  #isTickScheduled = false;

  constructor(server: SimServer, options: SimNetworkOptions) {
    this.#server = server;
    this.seed = options.seed;
    this.#random = createRandom(options.seed);
    this.#replyTimeoutMs = options.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
    this.#faults = { ...DEFAULT_FAULTS, ...options };
  }

  /** Virtual milliseconds since the network was made. */
  now(): number {
    return this.#now;
  }

  /** Resolves after `ms` virtual milliseconds; rejects with the signal's reason when aborted. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        event.isCancelled = true;
        reject(signal?.reason);
      };
      const event = this.#schedule(ms, () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Changes fault rates from now on (partitions are separate: see `partition`). */
  setFaults(faults: Partial<SimFaults>): void {
    this.#faults = { ...this.#faults, ...faults };
  }

  /** Cuts these clients off: their messages, both ways and already in flight, are lost until `heal`. */
  partition(clients: Iterable<number>): void {
    for (const c of clients) this.#cutOff.add(c);
  }

  /** Reconnects the clients given, or every client when none are given; the others stay cut off. */
  heal(clients?: Iterable<number>): void {
    if (clients === undefined) this.#cutOff.clear();
    else for (const c of clients) this.#cutOff.delete(c);
  }

  /** Client `client`'s end of the network: each call is one try, which rejects `NetworkError` on no reply. */
  transport(client: number): Transport {
    let isClosed = false;
    const closed = () => Promise.reject(new KvError("ERR_KV_CLOSED", "the transport is closed"));
    return {
      keepsCompletionRecords: this.#server.keepsCompletionRecords === true,
      get: (key: string, options?: TransportCallOptions & { wait?: WaitOptions | undefined }) =>
        isClosed ? closed() : this.#call(client, () => this.#server.get(key), options, options?.wait),
      put: (r: PutRequest, options?: TransportCallOptions) =>
        isClosed
          ? closed()
          : this.#call(
              client,
              async () => {
                const result = await this.#server.put(r.key, r.value, r.version, r.id, { isRetry: r.retry === true });
                if (result.err === "OK") this.#recheckParked();
                return result;
              },
              options,
            ),
      delete: (r: DeleteRequest, options?: TransportCallOptions) =>
        isClosed
          ? closed()
          : this.#call(
              client,
              async () => {
                if (this.#server.delete === undefined) throw new KvError("ERR_KV_BAD_REQUEST", "this server has no delete");
                const result = await this.#server.delete(r.key, r.version, r.id, { isRetry: r.retry === true });
                if (result.err === "OK") this.#recheckParked();
                return result;
              },
              options,
            ),
      close: async () => {
        isClosed = true;
      },
    };
  }

  // Every parked read is read again: the network does not know which key a put touched.
  // Writes made on the server directly, outside the network, are seen at the deadline.
  // One event, so no read of a parked call overlaps another of the same call.
  #recheckParked(): void {
    if (this.#parked.size === 0) return;
    this.#schedule(0, () => {
      for (const parked of [...this.#parked]) parked.recheck(false);
    });
  }

  #call<R>(client: number, serve: () => Promise<R>, options: TransportCallOptions | undefined, wait?: WaitOptions): Promise<R> {
    const signal = options?.signal;
    const timeoutMs = options?.timeoutMs ?? this.#replyTimeoutMs;
    return new Promise<R>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      let isSettled = false;
      const settle = (outcome: { ok: true; value: R } | { ok: false; error: unknown }) => {
        if (isSettled) return;
        isSettled = true;
        timeout.isCancelled = true;
        signal?.removeEventListener("abort", onAbort);
        if (outcome.ok) resolve(outcome.value);
        else reject(outcome.error);
      };
      const onAbort = () => settle({ ok: false, error: signal?.reason });
      signal?.addEventListener("abort", onAbort, { once: true });
      const timeout = this.#schedule(timeoutMs, () => {
        this.stats.timeouts++;
        settle({ ok: false, error: new NetworkError(`no reply within ${timeoutMs} ms (simulated)`) });
      });

      this.stats.requests++;
      if (this.#isLost(client, this.#faults.requestLoss, "lostRequests")) return;
      const reply = (outcome: { ok: true; value: R } | { ok: false; error: unknown }) => {
        if (this.#isLost(client, this.#faults.replyLoss, "lostReplies")) return;
        this.#schedule(this.#delay(), () => {
          if (!this.#isLost(client, 0, "lostReplies")) settle(outcome);
        });
      };
      // The server's side of a long-poll: it answers once the version differs, or at the deadline.
      const serveWaiting = (isFinal: boolean) => {
        this.#serverCallsInFlight++;
        serve()
          .then(
            (value) => ({ ok: true as const, value }),
            (error: unknown) => ({ ok: false as const, error }),
          )
          .then((outcome) => {
            this.#serverCallsInFlight--;
            if (isFinal || !outcome.ok || wait === undefined || versionOf(outcome.value as GetResult) !== wait.version) {
              if (parked !== undefined) {
                this.#parked.delete(parked);
                deadline.isCancelled = true;
              }
              reply(outcome);
            } else if (parked === undefined) {
              parked = { recheck: (isLast) => serveWaiting(isLast) };
              this.#parked.add(parked);
              deadline = this.#schedule(wait.ms, () => serveWaiting(true));
            }
            this.#kick();
          });
      };
      let parked: Parked | undefined;
      let deadline: Scheduled = { time: 0, seq: 0, run: () => {}, isCancelled: true };
      this.#schedule(this.#delay(), () => {
        if (this.#isLost(client, 0, "lostRequests")) return;
        serveWaiting(wait === undefined || wait.ms === 0);
      });
    });
  }

  #isLost(client: number, rate: number, counter: "lostRequests" | "lostReplies"): boolean {
    if (this.#cutOff.has(client)) {
      this.stats.partitioned++;
      return true;
    }
    if (rate > 0 && this.#random() < rate) {
      this.stats[counter]++;
      return true;
    }
    return false;
  }

  #delay(): number {
    const f = this.#faults;
    if (f.longDelayRate > 0 && this.#random() < f.longDelayRate) return this.#random() * f.longDelayMs;
    return f.minDelayMs + this.#random() * (f.maxDelayMs - f.minDelayMs);
  }

  #schedule(delayMs: number, run: () => void): Scheduled {
    const event: Scheduled = { time: this.#now + delayMs, seq: this.#seq++, run, isCancelled: false };
    heapPush(this.#queue, event);
    this.#kick();
    return event;
  }

  #kick(): void {
    if (this.#isTickScheduled || this.#serverCallsInFlight > 0 || this.#queue.length === 0) return;
    this.#isTickScheduled = true;
    // setImmediate runs after every microtask: what one delivery set off has settled before the next.
    setImmediate(() => {
      this.#isTickScheduled = false;
      if (this.#serverCallsInFlight > 0) return; // the server's reply kicks again
      let event = heapPop(this.#queue);
      while (event?.isCancelled) event = heapPop(this.#queue);
      if (event !== undefined) {
        this.#now = Math.max(this.#now, event.time);
        event.run();
      }
      this.#kick();
    });
  }
}

const versionOf = (r: GetResult) => (r.err === "OK" ? r.version : 0);

const before = (a: Scheduled, b: Scheduled) => a.time < b.time || (a.time === b.time && a.seq < b.seq);

function heapPush(heap: Scheduled[], item: Scheduled): void {
  heap.push(item);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!before(item, heap[parent] as Scheduled)) break;
    heap[i] = heap[parent] as Scheduled;
    i = parent;
  }
  heap[i] = item;
}

function heapPop(heap: Scheduled[]): Scheduled | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (heap.length === 0 || last === undefined) return top;
  let i = 0;
  while (true) {
    const l = 2 * i + 1;
    if (l >= heap.length) break;
    const r = l + 1;
    const child = r < heap.length && before(heap[r] as Scheduled, heap[l] as Scheduled) ? r : l;
    if (!before(heap[child] as Scheduled, last)) break;
    heap[i] = heap[child] as Scheduled;
    i = child;
  }
  heap[i] = last;
  return top;
}
