// The ceiling of kv's HTTP stack on this machine: Fastify, the same routes and reply bodies as
// kv, a conditional put over a Map — and nothing else: no schema validation, no hooks, no
// logger, no metrics, no limits. Plain JavaScript run by node, as kv's built server is.
// Prints "listening at <url>" once it listens; closes on SIGTERM.
import Fastify from "fastify";

const app = Fastify({ logger: false });
/** @type {Map<string, { value: string, version: number }>} */
const entries = new Map();

app.get("/v1/kv/:key", async (request, reply) => {
  const entry = entries.get(request.params.key);
  if (entry === undefined) return reply.code(404).send({ err: "ErrNoKey" });
  return { err: "OK", value: entry.value, version: entry.version };
});

app.put("/v1/kv/:key", async (request, reply) => {
  const { key } = request.params;
  const { value, version } = request.body;
  const current = entries.get(key);
  if ((current?.version ?? 0) !== version)
    return reply.code(current === undefined ? 404 : 409).send({ err: current === undefined ? "ErrNoKey" : "ErrVersion" });
  entries.set(key, { value, version: version + 1 });
  return { err: "OK", version: version + 1 };
});

process.once("SIGTERM", () => void app.close().then(() => process.exit(0)));
const url = await app.listen({ host: "127.0.0.1", port: 0 });
console.log(`listening at ${url}`);
