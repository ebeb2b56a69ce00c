import type { Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";

/**
 * How long a connection stays open after the server has given up on it and sent its last reply:
 * time for the peer to read the reply and close. Closing at once while the peer still sends makes
 * the kernel reset the connection, which can discard the reply before the peer reads it (RFC 9112
 * §9.6, "lingering close"). After it the connection is destroyed, whether or not the peer reads
 * or closes: a client that never reads must not hold a connection slot.
 */
export const LINGER_MS = 1_000;
/**
 * Once the server starts closing, how long a request still arriving has to arrive: a body on
 * its way is handled, a new request refused 503. Then the connection is given up.
 */
export const CLOSING_GRACE_MS = 1_000;
// Connections are destroyed, or given up while closing, up to this late.
const SWEEP_INTERVAL_MS = 250;

/**
 * The server's connections and when to let them go. Replies on one connection go out in the
 * order its requests came, so a refusal of bad bytes waits for the whole requests before them.
 * A connection whose sending side has ended — a refusal, a reply with `Connection: close`, a
 * failed TLS handshake — is destroyed {@link LINGER_MS} later. Once closing, after
 * {@link CLOSING_GRACE_MS}, a connection with no whole request being handled is refused 503 and
 * ended; one still in its TLS handshake is destroyed.
 */
export class Connections {
  readonly #server: Server;
  // Plain HTTP: every socket. HTTPS: each TLS socket once its handshake is done, or has failed.
  readonly #open = new Set<Duplex>();
  // HTTPS: the TCP sockets whose handshake is under way, by peer address.
  readonly #handshaking = new Map<string, Socket>();
  readonly #endedAt = new Map<Duplex, number>();
  // connection → its requests not yet answered (their replies have not closed)
  readonly #owed = new WeakMap<object, Set<ServerResponse>>();
  // connection → a raw refusal to send once its whole requests are answered
  readonly #pendingRefusals = new WeakMap<object, string>();
  readonly #sweeper: NodeJS.Timeout;
  #closing: { refusal: string; since: number } | undefined;

  constructor(server: Server, { isTls }: { isTls: boolean }) {
    this.#server = server;
    if (isTls) {
      server.on("connection", (socket: Socket) => {
        const peer = peerOf(socket);
        this.#handshaking.set(peer, socket);
        socket.once("close", () => this.#handshaking.get(peer) === socket && this.#handshaking.delete(peer));
      });
      server.on("secureConnection", (socket: Socket) => {
        this.#handshaking.delete(peerOf(socket));
        this.#track(socket);
      });
      // Node ends a socket whose handshake failed or timed out, then waits for the peer to close.
      server.on("tlsClientError", (_err: Error, socket: Socket) => this.#track(socket));
    } else {
      server.on("connection", (socket: Socket) => this.#track(socket));
    }
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_INTERVAL_MS).unref();
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
    if (refusal !== undefined && !hasWholeRequestInFlight(owed)) socket.end(refusal);
  }

  /**
   * Gives up on `socket` with `refusal`, a whole raw HTTP reply: sent once the whole requests
   * before the bad bytes are answered (a request not whole yet is the one refused: nothing of it
   * was applied), then the connection ends and lingers.
   */
  refuse(socket: Duplex, refusal: string): void {
    if (socket.writableEnded) return; // given up already: it lingers
    const owed = this.#owed.get(socket);
    if (hasWholeRequestInFlight(owed)) this.#pendingRefusals.set(socket, refusal);
    else socket.end(refusal);
    stopArriving(owed);
  }

  /**
   * The server is closing: idle keep-alive connections go now, without a word, as Node closes
   * them. After {@link CLOSING_GRACE_MS} every connection not busy with a whole request is sent
   * `refusal` and ended, a request still arriving on it never handled; TLS handshakes under way
   * are cut. Busy ones end after their replies (`Connection: close`).
   */
  startClosing(refusal: string): void {
    this.#closing = { refusal, since: performance.now() };
    this.#server.closeIdleConnections();
  }

  /** Stops sweeping; the server has closed every connection by now. */
  close(): void {
    clearInterval(this.#sweeper);
  }

  #track(socket: Duplex): void {
    if (socket.destroyed || this.#open.has(socket)) return;
    this.#open.add(socket);
    socket.once("close", () => {
      this.#open.delete(socket);
      this.#endedAt.delete(socket);
    });
  }

  /**
   * Closing: ends `socket` unless a whole request on it is being handled (it ends after that
   * reply, sent with `Connection: close`). A connection waiting for or receiving a request gets
   * the refusal; one whose replies are written but not yet read gets nothing more.
   */
  #close(socket: Duplex, refusal: string): void {
    const owed = this.#owed.get(socket) ?? new Set();
    let hasWrittenReplies = false;
    for (const response of owed) {
      if (!response.req.complete) continue;
      if (!response.writableEnded) return;
      hasWrittenReplies = true;
    }
    socket.end(hasWrittenReplies ? undefined : refusal);
    stopArriving(owed);
  }

  #sweep(): void {
    const now = performance.now();
    const closingRefusal = this.#closing !== undefined && now - this.#closing.since >= CLOSING_GRACE_MS ? this.#closing.refusal : undefined;
    for (const socket of this.#open) {
      if (socket.destroyed) continue;
      if (socket.writableEnded) {
        const endedAt = this.#endedAt.get(socket);
        if (endedAt === undefined) this.#endedAt.set(socket, now);
        else if (now - endedAt >= LINGER_MS) socket.destroy();
      } else if (closingRefusal !== undefined) {
        this.#close(socket, closingRefusal);
      }
    }
    if (closingRefusal !== undefined) for (const socket of this.#handshaking.values()) socket.destroy();
  }
}

/**
 * Requests whose bodies were still arriving on a connection given up on: Node's parser is
 * sound, so the rest could still come and make one a request to handle, after its refusal.
 * Paused, none reaches its handler; the connection lingers and goes.
 */
const stopArriving = (owed: Set<ServerResponse> | undefined): void => {
  for (const response of owed ?? []) if (!response.req.complete) response.req.pause();
};

const hasWholeRequestInFlight = (owed: Set<ServerResponse> | undefined): boolean => {
  for (const response of owed ?? []) if (response.req.complete) return true;
  return false;
};

const peerOf = (socket: Socket): string => `${socket.remoteAddress}|${socket.remotePort}`;
