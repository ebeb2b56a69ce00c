import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import type { Connections } from "./connections";
import { rawRefusal, refuse } from "./replies";
import type { Waiters } from "./waiters";

const SHUTTING_DOWN = "the server is shutting down";

/**
 * Closing (`app.close()`, on SIGTERM/SIGINT): requests already running are answered, long-poll
 * reads at once with the state then; a request that arrives now is refused 503 before it
 * touches the store, so a clerk may retry it elsewhere without ambiguity; every reply ends its
 * connection (a keep-alive socket would hold the process up); and connections still receiving
 * a request are given up on after a grace (see Connections).
 */
export const shutdownPlugin = fp(
  async (app: FastifyInstance, { waiters, connections }: { waiters: Waiters; connections: Connections }) => {
    let isClosing = false;
    app.addHook("onRequest", (_request, reply, done) => {
      if (isClosing) refuse(reply, "ErrUnavailable", SHUTTING_DOWN);
      done();
    });
    app.addHook("onSend", (_request, reply, payload, done) => {
      if (isClosing) reply.header("connection", "close");
      done(null, payload);
    });
    app.addHook("preClose", async () => {
      isClosing = true;
      waiters.endAll();
      connections.startClosing(rawRefusal("ErrUnavailable", SHUTTING_DOWN));
    });
  },
  { name: "kv-shutdown" },
);
