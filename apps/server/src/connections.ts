import type { Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { Server as TlsServer } from "node:tls";
import { hasCode } from "@kv/rpc";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { rawRefusal } from "./replies";

/**
 * How long a connection stays open after the server has given up on it and sent its last reply:
 * time for the peer to read the reply and close. Closing at once while the peer still sends makes
 * the kernel reset the connection, which can discard the reply before the peer reads it (RFC 9112
 * §9.6, "lingering close"). After it the connection is destroyed, whether or not the peer reads
 * or closes: a client that never reads must not hold a connection slot.
 */
const LINGER_MS = 1_000;
/**
 * Once the server starts closing, how long a request still arriving has to arrive: a body on
 * its way is handled, a new request refused 503. Then the connection is given up.
 */
export const CLOSING_GRACE_MS = 1_000;
// Connections are destroyed, or given up while closing, up to this late.
const SWEEP_INTERVAL_MS = 250;
// A reply must leave at this rate at least, after a grace of the send timeout: a client on a
// slow link still gets a large value; one that does not read lets go of its connection.
const MIN_SEND_BYTES_PER_SECOND = 64 * 1024;

export interface ConnectionsOptions {
  /** Open connections at most; more are closed as they arrive, unanswered (Node's `maxConnections`). */
  maxConnections: number;
  /** How long a reply may make no progress at all before its connection is destroyed, plus the time its size needs at the least rate. */
  sendTimeoutMs: number;
}

/**
 * The server's connections and when to let them go.
 *
 * - Replies on one connection go out in the order its requests came: a refusal of bad bytes
 *   waits for the whole requests before them to be answered.
 * - A connection is given up on when it is refused, ended (a reply with `Connection: close`),
 *   or closing. Nothing that arrives on it is handled any more. Once no request on it is being
 *   handled, it stays open {@link LINGER_MS} for its peer to read what was sent, then is
 *   destroyed, whether or not the peer reads or closes.
 * - Once closing, after {@link CLOSING_GRACE_MS}, a connection with no request being handled
 *   is given up on: refused 503, after the replies it still owes; one still in its TLS
 *   handshake is destroyed.
 * - A connection whose replies stop leaving (its peer does not read) is destroyed: after
 *   `sendTimeoutMs` with nothing sent, plus the time what waits needs at 64 KiB/s.
 */
export class Connections {
  // Plain HTTP: every socket. HTTPS: each TLS socket once its handshake is done.
  readonly #open = new Set<Socket>();
  // HTTPS: the TCP sockets whose handshake is under way, by peer address.
  readonly #handshaking = new Map<string, Socket>();
  // connections given up on without being ended (yet): a refusal waits, or replies are on their way out
  readonly #givenUp = new WeakSet<Socket>();
  // connection given up on → since when nothing on it was being handled
  readonly #idleSinceMs = new Map<Socket, number>();
  // connection → its requests not yet answered (their replies have not closed)
  readonly #owed = new WeakMap<Socket, Set<ServerResponse>>();
  // requests refused with their connection: never handled, and never waited for
  readonly #refused = new WeakSet<ServerResponse>();
  // connection → a raw refusal to send once its whole requests are answered
  readonly #pendingRefusals = new WeakMap<Socket, string>();
  // connection → bytes of its replies that had left when last looked at, and since when no more have
  readonly #sending = new Map<Socket, { sentBytes: number; sinceMs: number }>();
  readonly #maxConnections: number;
  readonly #sendTimeoutMs: number;
  readonly #sweeper: NodeJS.Timeout;
  #closing: { refusal: string; sinceMs: number } | undefined;

  constructor({ maxConnections, sendTimeoutMs }: ConnectionsOptions) {
    this.#maxConnections = maxConnections;
    this.#sendTimeoutMs = sendTimeoutMs;
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_INTERVAL_MS).unref();
  }

  /**
   * Caps `server`'s connections, follows them (over TLS, from the end of their handshake), and answers in
   * the contract's shape, in order, what Node would answer itself: a CONNECT, an `Expect`.
   */
  attach(server: Server): void {
    server.maxConnections = this.#maxConnections;
    if (server instanceof TlsServer) {
      server.on("connection", (socket: Socket) => {
        const peer = peerOf(socket);
        this.#handshaking.set(peer, socket);
        socket.once("close", () => this.#handshaking.get(peer) === socket && this.#handshaking.delete(peer));
      });
      server.on("secureConnection", (socket: Socket) => {
        this.#handshaking.delete(peerOf(socket));
        this.#track(socket);
      });
    } else {
      server.on("connection", (socket: Socket) => this.#track(socket));
    }
    server.on("connect", (_request, socket: Socket) => this.refuse(socket, rawRefusal("ErrBadRequest", "CONNECT is not supported")));
    server.on("checkExpectation", (request, response) => {
      const body = JSON.stringify({ err: "ErrBadRequest", message: `unsupported expectation: ${request.headers.expect}` });
      response.writeHead(417, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
    });
  }

  /**
   * Fastify's `clientErrorHandler`: bytes Node's parser refuses (a bad request line, headers too
   * large) are answered 400, a request that did not arrive within KV_HEADERS_TIMEOUT_MS /
   * KV_REQUEST_TIMEOUT_MS 408 — in order, by {@link refuse}.
   */
  readonly refuseClientError = (err: Error, socket: Socket): void => {
    const refusal = hasCode(err, "ERR_HTTP_REQUEST_TIMEOUT")
      ? rawRefusal("ErrRequestTimeout", "the request did not arrive in time")
      : rawRefusal("ErrBadRequest", err.message);
    this.refuse(socket, refusal, err);
  };

  /**
   * Whether a request that arrived on `socket` may be handled. Not on a connection given up on:
   * its reply would come out of order or not at all, and a peer that goes on sending there
   * must not make the server queue what it will never answer.
   */
  isOpen(socket: Socket): boolean {
    return !socket.writableEnded && !this.#givenUp.has(socket);
  }

  /** Counts `response`'s request as owed a reply on its connection, until {@link settle}. */
  owe(response: ServerResponse): void {
    const { socket } = response.req;
    const owed = this.#owed.get(socket) ?? new Set<ServerResponse>();
    this.#owed.set(socket, owed.add(response));
  }

  /** `response` has closed: answered, or abandoned. A refusal waiting for it goes out now. */
  settle(response: ServerResponse): void {
    const { socket } = response.req;
    const owed = this.#owed.get(socket);
    owed?.delete(response);
    const refusal = this.#pendingRefusals.get(socket);
    if (refusal === undefined || this.#hasWholeRequestInFlight(owed)) return;
    this.#pendingRefusals.delete(socket);
    if (!socket.writableEnded) socket.end(refusal); // a reply with `Connection: close` may have ended it
  }

  /**
   * Gives up on `socket` with `refusal`, a whole raw HTTP reply: sent once the whole requests
   * before the bad bytes are answered (a request not whole yet is the one refused: nothing of it
   * is handled), then the connection ends and lingers. A TLS connection whose handshake failed
   * has no session to answer on: it is destroyed.
   */
  refuse(socket: Socket, refusal: string, err?: Error): void {
    if (!this.isOpen(socket)) return; // given up already
    if (!socket.writable || !this.#open.has(socket)) {
      socket.destroy(err);
      return;
    }
    this.#givenUp.add(socket);
    const owed = this.#owed.get(socket);
    this.#stopArriving(owed);
    if (this.#hasWholeRequestInFlight(owed)) this.#pendingRefusals.set(socket, refusal);
    else socket.end(refusal);
  }

  /**
   * The server is closing: after {@link CLOSING_GRACE_MS} every connection with no request
   * being handled is given up on — sent `refusal` if it owes no reply — and TLS handshakes under
   * way are cut. Busy ones end after their replies (`Connection: close`). (Idle keep-alive
   * connections Node closes at once, without a word.)
   */
  startClosing(refusal: string): void {
    this.#closing = { refusal, sinceMs: performance.now() };
  }

  /** Stops sweeping; the server has closed every connection by now. */
  close(): void {
    clearInterval(this.#sweeper);
  }

  #track(socket: Socket): void {
    if (socket.destroyed) return;
    this.#open.add(socket);
    socket.once("close", () => {
      this.#open.delete(socket);
      this.#idleSinceMs.delete(socket);
      this.#sending.delete(socket);
    });
  }

  /**
   * Requests whose bodies were still arriving on a connection given up on: Node's parser is
   * sound, so the rest could still come and make one a request to handle, after its refusal.
   * Paused, none reaches its handler, and none is waited for.
   */
  #stopArriving(owed: Set<ServerResponse> | undefined): void {
    for (const response of owed ?? []) {
      if (response.req.complete) continue;
      response.req.pause();
      this.#refused.add(response);
    }
  }

  /** Whether a whole request on the connection has not had its reply leave yet. */
  #hasWholeRequestInFlight(owed: Set<ServerResponse> | undefined): boolean {
    for (const response of owed ?? []) if (response.req.complete && !this.#refused.has(response)) return true;
    return false;
  }

  /**
   * Whether the replies written to `socket` leave it no more: nothing sent for the send timeout
   * plus what waits at the least rate. A write completes whole, so the bytes seen to leave move
   * in steps of a reply: the rate allowance keeps a large one to a slow reader going.
   */
  #isStuck(socket: Socket, nowMs: number): boolean {
    const waitingBytes = socket.writableLength;
    if (waitingBytes === 0) {
      this.#sending.delete(socket);
      return false;
    }
    const sentBytes = socket.bytesWritten - waitingBytes;
    const sending = this.#sending.get(socket);
    if (sending?.sentBytes !== sentBytes) {
      this.#sending.set(socket, { sentBytes, sinceMs: nowMs });
      return false;
    }
    return nowMs - sending.sinceMs > this.#sendTimeoutMs + (waitingBytes / MIN_SEND_BYTES_PER_SECOND) * 1_000;
  }

  /** Whether a whole request on the connection is still being handled (its reply not written). */
  #isHandling(owed: Set<ServerResponse> | undefined): boolean {
    for (const response of owed ?? []) if (response.req.complete && !this.#refused.has(response) && !response.writableEnded) return true;
    return false;
  }

  /**
   * Closing: gives `socket` up unless a request on it is being handled, with the refusal after
   * the replies still on their way out (they go while it lingers).
   */
  #giveUpWhileClosing(socket: Socket, refusal: string): void {
    if (this.#isHandling(this.#owed.get(socket))) return;
    this.refuse(socket, refusal);
  }

  #sweep(): void {
    const nowMs = performance.now();
    const closingRefusal =
      this.#closing !== undefined && nowMs - this.#closing.sinceMs >= CLOSING_GRACE_MS ? this.#closing.refusal : undefined;
    for (const socket of this.#open) {
      if (socket.destroyed) continue;
      if (this.#isStuck(socket, nowMs)) {
        socket.destroy();
        continue;
      }
      if (this.isOpen(socket)) {
        if (closingRefusal === undefined) continue;
        this.#giveUpWhileClosing(socket, closingRefusal);
      }
      if (this.isOpen(socket) || this.#isHandling(this.#owed.get(socket))) continue;
      const idleSinceMs = this.#idleSinceMs.get(socket);
      if (idleSinceMs === undefined) this.#idleSinceMs.set(socket, nowMs);
      else if (nowMs - idleSinceMs >= LINGER_MS) socket.destroy();
    }
    if (closingRefusal !== undefined) for (const socket of this.#handshaking.values()) socket.destroy();
  }
}

const peerOf = (socket: Socket): string => `${socket.remoteAddress}|${socket.remotePort}`;

/**
 * The app's side of {@link Connections}: each request is owed a reply on its connection until
 * its reply closes, and one that arrives on a connection given up on is dropped with it (a peer
 * still sending there gets no more of the server's time).
 */
export const connectionsPlugin = fp(
  async (app: FastifyInstance, { connections }: { connections: Connections }) => {
    connections.attach(app.server);
    app.addHook("onRequest", (request, reply, done) => {
      const { socket } = request.raw;
      if (!connections.isOpen(socket)) return void socket.destroy(); // never handled, never answered
      connections.owe(reply.raw);
      reply.raw.on("close", () => connections.settle(reply.raw));
      done();
    });
    app.addHook("onClose", () => connections.close());
  },
  { name: "kv-connections" },
);
