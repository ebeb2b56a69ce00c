import { createServer, type Server, type Socket, connect } from "node:net";
import { createRandom } from "./random";

/** Chances (0–1, summing to at most 1) of what happens to one chunk of data in one direction. */
export interface FaultRates {
  /** Both connections reset (RST): the client sees ECONNRESET. */
  reset?: number;
  /** The chunk is not forwarded and both connections are closed: a lost request or reply. */
  drop?: number;
  /** The chunk and all that follows on this connection vanish; the connections stay open, silent. */
  blackhole?: number;
  /** The chunk is forwarded after `delayMs`, in order with the rest. */
  delay?: number;
  delayMs?: number;
}

export interface ProxyFaults {
  /** Each new connection, as it is accepted (`delay` does not apply): before any request. */
  connection?: FaultRates;
  /** Client → server: a faulty request never reaches the server. */
  request?: FaultRates;
  /** Server → client: the server acted, but its reply never arrives. */
  reply?: FaultRates;
}

export interface FaultProxyOptions extends ProxyFaults {
  target: { host: string; port: number };
  /** Decisions are drawn from this seed (default: random). */
  seed?: number;
}

export interface FaultProxyStats {
  connections: number;
  forwarded: number;
  reset: number;
  dropped: number;
  blackholed: number;
  delayed: number;
}

const DEFAULT_DELAY_MS = 50;

/**
 * A TCP proxy on 127.0.0.1 in front of a real server that resets, drops, blackholes or delays
 * traffic at rates a test may change while it runs. HTTP/1.1 sends a request, and a reply, as
 * one chunk in the common case, so a decision per chunk is close to a decision per request.
 */
export class FaultProxy {
  readonly stats: FaultProxyStats = { connections: 0, forwarded: 0, reset: 0, dropped: 0, blackholed: 0, delayed: 0 };
  readonly #server: Server;
  readonly #target: { host: string; port: number };
  readonly #random: () => number;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #faults: Required<ProxyFaults>;
  #closed: Promise<void> | undefined;

  private constructor(server: Server, options: FaultProxyOptions) {
    this.#server = server;
    this.#target = options.target;
    this.#random = createRandom(options.seed ?? Math.floor(Math.random() * 2 ** 31));
    this.#faults = { connection: options.connection ?? {}, request: options.request ?? {}, reply: options.reply ?? {} };
  }

  /** @internal Use {@link createFaultProxy}. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, options);
    server.on("connection", (client) => proxy.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    return proxy;
  }

  get port(): number {
    const address = this.#server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy is not listening");
    return address.port;
  }

  /** `http://127.0.0.1:<port>`: the address clients should use instead of the server's. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Replaces the fault rates of the directions given; connections already open follow the new rates. */
  setFaults(faults: ProxyFaults): void {
    this.#faults = { ...this.#faults, ...faults };
  }

  /** Stops listening, drops delayed chunks and destroys every connection; idempotent. */
  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      for (const t of this.#timers) clearTimeout(t);
      for (const s of this.#sockets) s.destroy();
      this.#server.close(() => resolve());
    });
    return this.#closed;
  }

  /** Rolls one fault from `rates`: which one happens, if any. */
  #roll(rates: FaultRates): "reset" | "drop" | "blackhole" | "delay" | undefined {
    let roll = this.#random();
    for (const fault of ["reset", "drop", "blackhole", "delay"] as const) {
      roll -= rates[fault] ?? 0;
      if (roll < 0) return fault;
    }
    return undefined;
  }

  #accept(client: Socket): void {
    this.stats.connections++;
    this.#sockets.add(client);
    client.on("close", () => this.#sockets.delete(client));
    client.on("error", () => {}); // resets are the point here
    switch (this.#roll(this.#faults.connection)) {
      case "reset":
        this.stats.reset++;
        client.resetAndDestroy();
        break;
      case "drop":
        this.stats.dropped++;
        client.end();
        break;
      case "blackhole":
        this.stats.blackholed++;
        client.resume(); // read and discard; never answer
        break;
      default:
        this.#pipe(client);
    }
  }

  #pipe(client: Socket): void {
    const upstream = connect(this.#target.port, this.#target.host);
    this.#sockets.add(upstream);
    upstream.on("close", () => this.#sockets.delete(upstream));
    upstream.on("error", () => {});
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    let isBlackholed = false;
    const pipe = (from: Socket, to: Socket, direction: keyof ProxyFaults) => {
      let queue = Promise.resolve();
      from.on("data", (chunk: Buffer) => {
        if (isBlackholed) return;
        const rates = this.#faults[direction];
        switch (this.#roll(rates)) {
          case "reset":
            this.stats.reset++;
            client.resetAndDestroy();
            upstream.resetAndDestroy();
            break;
          case "drop":
            this.stats.dropped++;
            end();
            break;
          case "blackhole":
            this.stats.blackholed++;
            isBlackholed = true;
            break;
          case "delay": {
            this.stats.delayed++;
            const ms = rates.delayMs ?? DEFAULT_DELAY_MS;
            queue = queue.then(() => this.#sleep(ms)).then(() => forward(to, chunk));
            break;
          }
          default:
            queue = queue.then(() => forward(to, chunk));
        }
      });
    };
    const forward = (to: Socket, chunk: Buffer) => {
      if (isBlackholed || to.destroyed) return;
      this.stats.forwarded++;
      to.write(chunk);
    };
    pipe(client, upstream, "request");
    pipe(upstream, client, "reply");
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, ms);
      this.#timers.add(timer);
    });
  }
}

/** Starts a {@link FaultProxy} on 127.0.0.1 at a free port, forwarding to `options.target`. */
export const createFaultProxy = (options: FaultProxyOptions): Promise<FaultProxy> => FaultProxy.start(options);
