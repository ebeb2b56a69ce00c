import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyReply } from "fastify";
import { refuse } from "./replies";

/** A hook that refuses requests without the token, comparing digests so the time taken tells nothing. */
export function bearerTokenCheck(token: string) {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  const expected = digest(`Bearer ${token}`);
  return async (request: { headers: { authorization?: string | undefined } }, reply: FastifyReply) => {
    if (!timingSafeEqual(digest(request.headers.authorization ?? ""), expected)) {
      return refuse(reply, "ErrUnauthorized", "a valid bearer token is required");
    }
  };
}
