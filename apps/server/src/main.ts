import { hasCode } from "@kv/rpc";
import closeWithGrace from "close-with-grace";
import { buildApp } from "./app";
import { ConfigError, parseConfig } from "./config";
import { openStore } from "./store";
import { loadTls, TlsConfigError } from "./tls";

let config;
try {
  config = parseConfig(process.env, process.argv.slice(2));
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  for (const problem of err.problems) process.stderr.write(`kv-server: ${problem}\n`);
  process.exit(2);
}

const CLERK_RETRY_LIMIT_MS = 60_000;

let https;
try {
  if (config.tls !== undefined) https = loadTls(config.tls);
} catch (err) {
  if (!(err instanceof TlsConfigError)) throw err;
  process.stderr.write(`kv-server: cannot serve HTTPS: ${err.message}\n`);
  process.exit(2);
}

let store;
try {
  store = await openStore(config.store, {
    retentionMs: config.idRetentionMs,
    maxIds: config.maxIds,
    recordRefusals: config.recordRefusals,
  });
} catch (err) {
  if (!hasCode(err, "ERR_KV_STORE_OPEN")) throw err;
  process.stderr.write(`kv-server: cannot open the store: ${(err as Error).message}\n`);
  process.exit(1);
}
const app = await buildApp(config, store, https === undefined ? {} : { https });
// A clerk retries a put for 60 s by default, after it took up to the request timeout to arrive.
if (config.idRetentionMs < config.requestTimeoutMs + CLERK_RETRY_LIMIT_MS) {
  app.log.warn(
    { idRetentionMs: config.idRetentionMs },
    `KV_ID_RETENTION_MS is below KV_REQUEST_TIMEOUT_MS + ${CLERK_RETRY_LIMIT_MS} ms: a clerk's retry may find its put's completion record gone, and answer a new decision`,
  );
}

if (!config.recordRefusals) {
  app.log.warn(
    "KV_TEST_NO_REFUSAL_RECORDS=1: refusals are not recorded, so a put's earlier try may apply after a retry was refused — for tests only",
  );
}

closeWithGrace({ delay: 10_000, logger: { error: (msg: unknown) => app.log.error(msg) } }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, "closing after an error");
  else app.log.info({ signal }, "closing");
  await app.close(); // stop accepting, answer the requests in flight; onClose closes the store
});

try {
  await app.listen({ host: config.host, port: config.port }); // Fastify logs the bound address
} catch (err) {
  process.stderr.write(`kv-server: cannot listen on ${config.host}:${config.port}: ${(err as Error).message}\n`);
  process.exit(1);
}
