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
  #faults: Required<ProxyFaults>;
  #closed: Promise<void> | undefined;

  private constructor(server: Server, options: FaultProxyOptions) {
    this.#server = server;
    this.#target = options.target;
    this.#random = createRandom(options.seed ?? Math.floor(Math.random() * 2 ** 31));
    this.#faults = { request: options.request ?? {}, reply: options.reply ?? {} };
  }

  /** Starts a proxy on 127.0.0.1 at a free port. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, options);
    server.on("connection", (client) => proxy.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
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

  /** Stops listening and destroys every connection; idempotent. */
  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      for (const s of this.#sockets) s.destroy();
      this.#server.close(() => resolve());
    });
    return this.#closed;
  }

  #accept(client: Socket): void {
    this.stats.connections++;
    const upstream = connect(this.#target.port, this.#target.host);
    for (const s of [client, upstream]) {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
      s.on("error", () => {}); // resets are the point here; the close handlers clean up
    }
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
        let roll = this.#random();
        const hits = (rate: number | undefined) => {
          roll -= rate ?? 0;
          return roll < 0;
        };
        if (hits(rates.reset)) {
          this.stats.reset++;
          client.resetAndDestroy();
          upstream.resetAndDestroy();
        } else if (hits(rates.drop)) {
          this.stats.dropped++;
          end();
        } else if (hits(rates.blackhole)) {
          this.stats.blackholed++;
          isBlackholed = true;
        } else if (hits(rates.delay)) {
          this.stats.delayed++;
          const ms = rates.delayMs ?? DEFAULT_DELAY_MS;
          queue = queue.then(() => new Promise((r) => setTimeout(r, ms))).then(() => forward(to, chunk));
        } else {
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
}
