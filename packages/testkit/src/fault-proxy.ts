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
  /** The chunk is forwarded `delayMs` late, in order with the rest (for a connection: every chunk, both ways). */
  delay?: number;
  /** How late a delayed chunk is forwarded (default 50 ms). */
  delayMs?: number;
}

/** Fault rates per direction; a direction left out has no faults. */
export interface ProxyFaults {
  /** Each new connection, as it is accepted: before any request. */
  connection?: FaultRates;
  /** Client → server: a faulty request never reaches the server. */
  request?: FaultRates;
  /** Server → client: the server acted, but its reply never arrives. */
  reply?: FaultRates;
}

/** Where a {@link FaultProxy} forwards to, its first fault rates, and its seed. */
export interface FaultProxyOptions extends ProxyFaults {
  /** The server behind the proxy. */
  target: { host: string; port: number };
  /** Decisions are drawn from this seed (default: random). */
  seed?: number;
}

/**
 * What a {@link FaultProxy} has done so far. A fault counts once each time it is rolled: once per
 * connection for a `connection` fault, once per chunk for a `request` or `reply` fault.
 */
export interface FaultProxyStats {
  /** Connections accepted. */
  connections: number;
  /** Chunks passed on, either way. */
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

  /** `await using proxy = await createFaultProxy(…)` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
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
      case "delay":
        this.stats.delayed++;
        this.#pipe(client, this.#faults.connection.delayMs ?? DEFAULT_DELAY_MS);
        break;
      default:
        this.#pipe(client, 0);
    }
  }

  /** Forwards both ways, every chunk `connectionDelayMs` late (plus any delay rolled for it). */
  #pipe(client: Socket, connectionDelayMs: number): void {
    const upstream = connect(this.#target.port, this.#target.host);
    this.#sockets.add(upstream);
    upstream.on("close", () => this.#sockets.delete(upstream));
    upstream.on("error", () => {});
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    let isBlackholed = false;
    const pipe = (from: Socket, to: Socket, direction: keyof ProxyFaults) => {
      // Chunks leave in the order they came, each once its own delay is over.
      let queue = Promise.resolve();
      const send = (chunk: Buffer, delayMs: number) => {
        const due = performance.now() + delayMs;
        queue = queue.then(() => this.#sleep(due - performance.now())).then(() => forward(to, chunk));
      };
      // What `from` sent before it closed still goes through, late if delayed; then `to` closes.
      from.on("close", () => {
        queue = queue.then(() => {
          if (!to.destroyed) to.end();
        });
      });
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
          case "delay":
            this.stats.delayed++;
            send(chunk, connectionDelayMs + (rates.delayMs ?? DEFAULT_DELAY_MS));
            break;
          default:
            send(chunk, connectionDelayMs);
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
    if (ms <= 0) return Promise.resolve();
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
