import { STATUS_CODES } from "node:http";
import { type ReplyErr, statusByErr } from "@kv/rpc";
import type { FastifyReply, FastifyRequest } from "fastify";

/** Sends a refusal in the contract's shape: the status that goes with `err`, and what was wrong. */
export const refuse = (reply: FastifyReply, err: Exclude<ReplyErr, "OK">, message?: string): FastifyReply =>
  reply.code(statusByErr[err]).send(message === undefined ? { err } : { err, message });

/** A whole HTTP/1.1 refusal in the contract's shape, for a socket Fastify never saw a request on; it closes the connection. */
export function rawRefusal(err: Exclude<ReplyErr, "OK">, message: string): string {
  const status = statusByErr[err];
  const body = JSON.stringify({ err, message });
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** The not-found handler: 404 `ErrNotFound`, naming the method and path asked for. */
export const notFound = (request: FastifyRequest, reply: FastifyReply): FastifyReply =>
  refuse(reply, "ErrNotFound", `no route ${request.method} ${request.url.split("?")[0]}`);
