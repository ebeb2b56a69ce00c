import type { Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";

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

export interface ConnectionsOptions {
  isTls: boolean;
  /** A reply the peer does not read for this long (nothing of it leaves) ends its connection. */
  sendTimeoutMs: number;
}

/**
 * The server's connections and when to let them go.
 *
 * - Replies on one connection go out in the order its requests came: a refusal of bad bytes
 *   waits for the whole requests before them.
 * - A connection given up on — refused, or ended by a reply with `Connection: close` — is read
 *   no more as requests: a request that arrives on it is never handled. It is destroyed
 *   {@link LINGER_MS} after its end, or once its replies make no progress for as long.
 * - A connection whose replies make no progress for `sendTimeoutMs` (its peer does not read) is
 *   destroyed.
 * - Once closing, after {@link CLOSING_GRACE_MS}, a connection with no whole request being
 *   handled is refused 503 and ended; one still in its TLS handshake is destroyed.
 */
export class Connections {
  readonly #sendTimeoutMs: number;
  // Plain HTTP: every socket. HTTPS: each TLS socket once its handshake is done.
  readonly #open = new Set<Socket>();
  // HTTPS: the TCP sockets whose handshake is under way, by peer address.
  readonly #handshaking = new Map<string, Socket>();
  readonly #endedAtMs = new Map<Socket, number>();
  // connection → bytes of its replies that had left, and since when no more have
  readonly #stalled = new Map<Socket, { sentBytes: number; sinceMs: number }>();
  // connection → its requests not yet answered (their replies have not closed)
  readonly #owed = new WeakMap<object, Set<ServerResponse>>();
  // requests refused with their connection: never handled, and never waited for
  readonly #refused = new WeakSet<ServerResponse>();
  // connection → a raw refusal to send once its whole requests are answered
  readonly #pendingRefusals = new WeakMap<object, string>();
  readonly #sweeper: NodeJS.Timeout;
  #closing: { refusal: string; sinceMs: number } | undefined;

  constructor(server: Server, { isTls, sendTimeoutMs }: ConnectionsOptions) {
    this.#sendTimeoutMs = sendTimeoutMs;
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
    } else {
      server.on("connection", (socket: Socket) => this.#track(socket));
    }
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_INTERVAL_MS).unref();
  }

  /**
   * Whether a request on `socket` may be handled; if not, it must be left alone, unanswered:
   * its connection was given up on (a reply to it would come out of order, or not at all).
   */
  isOpen(socket: Socket): boolean {
    return !socket.writableEnded && !this.#pendingRefusals.has(socket);
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
    socket.end(refusal);
  }

  /**
   * Gives up on `socket` with `refusal`, a whole raw HTTP reply: sent once the whole requests
   * before the bad bytes are answered (a request not whole yet is the one refused: nothing of it
   * is handled), then the connection ends and lingers. A TLS connection whose handshake failed
   * has no session to answer on: it is destroyed.
   */
  refuse(socket: Socket, refusal: string, err: Error): void {
    if (!this.isOpen(socket)) return; // given up already
    if (!socket.writable || !this.#open.has(socket)) {
      socket.destroy(err);
      return;
    }
    const owed = this.#owed.get(socket);
    this.#stopArriving(owed);
    if (this.#hasWholeRequestInFlight(owed)) this.#pendingRefusals.set(socket, refusal);
    else socket.end(refusal);
  }

  /**
   * The server is closing: after {@link CLOSING_GRACE_MS} every connection not busy with a whole
   * request is sent `refusal` and ended, a request still arriving on it never handled; TLS
   * handshakes under way are cut. Busy ones end after their replies (`Connection: close`).
   * (Idle keep-alive connections Node closes at once, without a word.)
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
      this.#endedAtMs.delete(socket);
      this.#stalled.delete(socket);
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

  #hasWholeRequestInFlight(owed: Set<ServerResponse> | undefined): boolean {
    for (const response of owed ?? []) if (response.req.complete && !this.#refused.has(response)) return true;
    return false;
  }

  /**
   * Closing: ends `socket` unless a whole request on it is being handled (it ends after that
   * reply, sent with `Connection: close`). A connection waiting for or receiving a request gets
   * the refusal; one whose replies are written but not yet read gets nothing more.
   */
  #giveUpWhileClosing(socket: Socket, refusal: string): void {
    if (this.#pendingRefusals.has(socket)) return; // its refusal follows its replies
    const owed = this.#owed.get(socket);
    let hasWrittenReplies = false;
    for (const response of owed ?? []) {
      if (!response.req.complete || this.#refused.has(response)) continue;
      if (!response.writableEnded) return;
      hasWrittenReplies = true;
    }
    this.#stopArriving(owed);
    if (hasWrittenReplies) socket.end();
    else socket.end(refusal);
  }

  /** Whether `socket`'s replies have made no progress for `timeoutMs`: its peer does not read. */
  #isStalled(socket: Socket, nowMs: number, timeoutMs: number): boolean {
    if (socket.writableLength === 0) {
      this.#stalled.delete(socket);
      return false;
    }
    const sentBytes = socket.bytesWritten - socket.writableLength; // handed to the kernel
    const stalled = this.#stalled.get(socket);
    if (stalled?.sentBytes !== sentBytes) {
      this.#stalled.set(socket, { sentBytes, sinceMs: nowMs });
      return false;
    }
    return nowMs - stalled.sinceMs >= timeoutMs;
  }

  #sweep(): void {
    const nowMs = performance.now();
    const closingRefusal = this.#closing !== undefined && nowMs - this.#closing.sinceMs >= CLOSING_GRACE_MS ? this.#closing.refusal : undefined;
    for (const socket of this.#open) {
      if (socket.destroyed) continue;
      const isGivenUp = !this.isOpen(socket) || closingRefusal !== undefined;
      if (this.#isStalled(socket, nowMs, isGivenUp ? LINGER_MS : this.#sendTimeoutMs)) {
        socket.destroy();
      } else if (socket.writableEnded) {
        const endedAtMs = this.#endedAtMs.get(socket);
        if (endedAtMs === undefined) this.#endedAtMs.set(socket, nowMs);
        else if (nowMs - endedAtMs >= LINGER_MS) socket.destroy();
      } else if (closingRefusal !== undefined) {
        this.#giveUpWhileClosing(socket, closingRefusal);
      }
    }
    if (closingRefusal !== undefined) for (const socket of this.#handshaking.values()) socket.destroy();
  }
}

const peerOf = (socket: Socket): string => `${socket.remoteAddress}|${socket.remotePort}`;
