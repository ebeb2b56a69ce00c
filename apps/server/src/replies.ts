import { type ReplyErr, statusByErr } from "@kv/rpc";
import type { FastifyReply } from "fastify";

/** Sends a refusal in the contract's shape: the status that goes with `err`, and what was wrong. */
export const refuse = (reply: FastifyReply, err: Exclude<ReplyErr, "OK">, message?: string): FastifyReply =>
  reply.code(statusByErr[err]).send(message === undefined ? { err } : { err, message });
