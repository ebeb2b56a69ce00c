import { parseArgs } from "node:util";
import { DEFAULT_ID_RETENTION_MS, DEFAULT_MAX_IDS } from "@kv/server";

/** Where the server keeps its data (`KV_STORE`). */
export type StoreConfig =
  | { readonly kind: "memory" }
  | { readonly kind: "lmdb"; readonly path: string }
  | { readonly kind: "etcd"; readonly endpoints: readonly string[]; readonly prefix: string };

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly store: StoreConfig;
  /** When set, every `/v1` request needs `Authorization: Bearer <authToken>`. */
  readonly authToken: string | undefined;
  /** With `authToken`: `/metrics` needs the token too. */
  readonly isMetricsAuthRequired: boolean;
  /** Serve HTTPS with this certificate chain and key (PEM file paths); both or neither. */
  readonly tls: { readonly certPath: string; readonly keyPath: string } | undefined;
  readonly maxKeyBytes: number;
  readonly maxValueBytes: number;
  /** Open connections at most; more are closed as they arrive. */
  readonly maxConnections: number;
  /** `/v1` requests being handled at once at most; more are refused 503 before they reach the store. */
  readonly maxInFlight: number;
  /** Long-poll reads waiting at once at most; more are refused 503. */
  readonly maxWaiters: number;
  /** How long a write's completion record is kept (contract §2). */
  readonly idRetentionMs: number;
  /** Completion records at most; past it, writes that need a new one are refused 503. */
  readonly maxIds: number;
  /** Tests only (`KV_TEST_NO_REFUSAL_RECORDS=1` makes it false): whether a retry's refusal is recorded. */
  readonly recordRefusals: boolean;
  /** Past this event-loop delay `/v1` requests are refused 503 until it recovers; 0: no limit. */
  readonly maxEventLoopDelayMs: number;
  /** A request's headers must have arrived within this (slow-loris headers). */
  readonly headersTimeoutMs: number;
  /** A whole request must have arrived within this (a body never finished). */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  readonly logLevel: LogLevel;
}

/** One or more configuration problems, all named in `message`, one per line. */
export class ConfigError extends Error {
  readonly code = "ERR_KV_CONFIG";
  override name = "ConfigError";
  constructor(readonly problems: readonly string[]) {
    super(problems.join("\n"));
  }
}

// A key travels in the request line, which Node caps with the headers at 16 KiB; percent-encoding
// can triple it. 4096 bytes (12 KiB encoded) is the most that always fits.
const KEY_BYTES_CEILING = 4096;
// The body limit is six times the value limit (JSON's \u escapes); keep that well inside memory.
const VALUE_BYTES_CEILING = 64 * 1024 * 1024;
// Contract §5: a durable store in the working directory unless told otherwise.
const DEFAULT_STORE = "lmdb:kv-data";
// kv's keys live under this prefix in etcd, so a cluster can hold other data, or several kvs.
const DEFAULT_ETCD_PREFIX = "kv/";
// Enough for a fleet of clients with keep-alive pools; each costs a socket and a little memory.
const DEFAULT_MAX_CONNECTIONS = 10_000;
// Past this many requests at once, queueing only adds latency: refuse and let clients back off.
const DEFAULT_MAX_IN_FLIGHT = 1_024;
// A waiting read costs a socket, a timer and a little memory, no CPU: many may wait (a lock's
// waiters, watchers), within the connection cap.
const DEFAULT_MAX_WAITERS = 10_000;
// A second of event-loop delay means every request already waits a second: shed load.
const DEFAULT_MAX_EVENT_LOOP_DELAY_MS = 1_000;
// A client sends its headers at once; ten seconds is generous, and ends slow-loris connections.
const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
// A 6 MiB body (a 1 MiB value at worst JSON escaping) over a slow link, with room to spare.
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
// Fastify's default: longer than the usual load balancer's idle timeout (60 s).
const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 72_000;
const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Each setting: its environment variable and the `--flag` of the same name. */
const SETTINGS = {
  host: "KV_HOST",
  port: "KV_PORT",
  store: "KV_STORE",
  "etcd-prefix": "KV_ETCD_PREFIX",
  "auth-token": "KV_AUTH_TOKEN",
  "metrics-auth": "KV_METRICS_AUTH",
  "tls-cert": "KV_TLS_CERT",
  "tls-key": "KV_TLS_KEY",
  "max-key-bytes": "KV_MAX_KEY_BYTES",
  "max-value-bytes": "KV_MAX_VALUE_BYTES",
  "max-connections": "KV_MAX_CONNECTIONS",
  "max-in-flight": "KV_MAX_IN_FLIGHT",
  "max-waiters": "KV_MAX_WAITERS",
  "id-retention-ms": "KV_ID_RETENTION_MS",
  "max-ids": "KV_MAX_IDS",
  "max-event-loop-delay-ms": "KV_MAX_EVENT_LOOP_DELAY_MS",
  "headers-timeout-ms": "KV_HEADERS_TIMEOUT_MS",
  "request-timeout-ms": "KV_REQUEST_TIMEOUT_MS",
  "keep-alive-timeout-ms": "KV_KEEP_ALIVE_TIMEOUT_MS",
  "log-level": "KV_LOG_LEVEL",
} as const;
type Flag = keyof typeof SETTINGS;

/**
 * Reads the server's configuration (contract §5) from environment variables and `--flags`; a
 * flag wins over its variable. Returns a frozen `Config`; throws `ConfigError` naming every bad
 * setting at once.
 */
export function parseConfig(env: Readonly<Record<string, string | undefined>>, argv: readonly string[]): Config {
  const problems: string[] = [];
  let flags: Partial<Record<Flag, string>> = {};
  try {
    const options = Object.fromEntries(Object.keys(SETTINGS).map((f) => [f, { type: "string" as const }]));
    flags = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values as typeof flags;
  } catch (err) {
    problems.push(`command line: ${(err as Error).message}`);
  }
  const raw = (flag: Flag): { name: string; value: string } | undefined => {
    const value = flags[flag] ?? env[SETTINGS[flag]];
    if (value === undefined) return undefined;
    return { name: flags[flag] === undefined ? SETTINGS[flag] : `--${flag}`, value };
  };
  const integer = (flag: Flag, fallback: number, min: number, max: number): number => {
    const setting = raw(flag);
    if (setting === undefined) return fallback;
    const n = /^\d+$/.test(setting.value) ? Number(setting.value) : Number.NaN;
    if (!(n >= min && n <= max)) {
      problems.push(`${setting.name} must be an integer from ${min} to ${max}, got ${JSON.stringify(setting.value)}`);
    }
    return n;
  };

  const host = raw("host")?.value ?? "127.0.0.1";
  if (host === "") problems.push(`${SETTINGS.host} must not be empty`);
  const port = integer("port", 7070, 0, 65535);
  const maxKeyBytes = integer("max-key-bytes", 4096, 1, KEY_BYTES_CEILING);
  const maxValueBytes = integer("max-value-bytes", 1024 * 1024, 0, VALUE_BYTES_CEILING);

  const store = parseStore(raw("store") ?? { name: SETTINGS.store, value: DEFAULT_STORE }, raw("etcd-prefix"), problems);

  const authToken = raw("auth-token")?.value;
  if (authToken === "") problems.push(`${SETTINGS["auth-token"]} must not be empty when set`);

  const metricsAuth = raw("metrics-auth");
  const isMetricsAuthRequired = metricsAuth?.value === "true";
  if (metricsAuth !== undefined && !["true", "false"].includes(metricsAuth.value)) {
    problems.push(`${metricsAuth.name} must be true or false, got ${JSON.stringify(metricsAuth.value)}`);
  }
  if (isMetricsAuthRequired && authToken === undefined) problems.push(`${metricsAuth?.name}=true needs ${SETTINGS["auth-token"]}`);

  const [cert, key] = [raw("tls-cert"), raw("tls-key")];
  if ((cert === undefined) !== (key === undefined))
    problems.push(`${SETTINGS["tls-cert"]} and ${SETTINGS["tls-key"]} go together: set both or neither`);
  for (const setting of [cert, key]) if (setting?.value === "") problems.push(`${setting.name} must be a file path`);
  const tls = cert !== undefined && key !== undefined ? Object.freeze({ certPath: cert.value, keyPath: key.value }) : undefined;

  const maxConnections = integer("max-connections", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000);
  const maxInFlight = integer("max-in-flight", DEFAULT_MAX_IN_FLIGHT, 1, 1_000_000);
  const maxWaiters = integer("max-waiters", DEFAULT_MAX_WAITERS, 0, 1_000_000);
  const idRetentionMs = integer("id-retention-ms", DEFAULT_ID_RETENTION_MS, 1, 86_400_000);
  const maxIds = integer("max-ids", DEFAULT_MAX_IDS, 1, 100_000_000);
  // No flag of its own: a switch for the tests that show what refusal records prevent.
  const recordRefusals = env.KV_TEST_NO_REFUSAL_RECORDS !== "1";
  const maxEventLoopDelayMs = integer("max-event-loop-delay-ms", DEFAULT_MAX_EVENT_LOOP_DELAY_MS, 0, 60_000);
  const headersTimeoutMs = integer("headers-timeout-ms", DEFAULT_HEADERS_TIMEOUT_MS, 1, 3_600_000);
  const requestTimeoutMs = integer("request-timeout-ms", DEFAULT_REQUEST_TIMEOUT_MS, 1, 3_600_000);
  const keepAliveTimeoutMs = integer("keep-alive-timeout-ms", DEFAULT_KEEP_ALIVE_TIMEOUT_MS, 1, 3_600_000);
  // Node needs the whole request's deadline at least as long as the headers'.
  if (requestTimeoutMs < headersTimeoutMs)
    problems.push(`${SETTINGS["request-timeout-ms"]} must be at least ${SETTINGS["headers-timeout-ms"]} (${headersTimeoutMs})`);

  const level = raw("log-level");
  const logLevel = (level?.value ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`${level?.name} must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(level?.value)}`);
  }

  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    host,
    port,
    store,
    authToken,
    isMetricsAuthRequired,
    tls,
    maxKeyBytes,
    maxValueBytes,
    maxConnections,
    maxInFlight,
    maxWaiters,
    idRetentionMs,
    maxIds,
    recordRefusals,
    maxEventLoopDelayMs,
    headersTimeoutMs,
    requestTimeoutMs,
    keepAliveTimeoutMs,
    logLevel,
  });
}

type Setting = { name: string; value: string };

/** `memory`, `lmdb:<dir>` or `etcd:<url>[,<url>…]`, with `KV_ETCD_PREFIX` for etcd only. */
function parseStore(store: Setting, etcdPrefix: Setting | undefined, problems: string[]): StoreConfig {
  const [kind, ...rest] = store.value.split(":");
  const where = rest.join(":");
  const expected = `${store.name} must be "memory", "lmdb:<dir>" or "etcd:<url>[,<url>…]", got ${JSON.stringify(store.value)}`;
  if (etcdPrefix !== undefined && kind !== "etcd") problems.push(`${etcdPrefix.name} applies only to an etcd store (${store.name}=etcd:…)`);
  switch (kind) {
    case "memory":
      if (rest.length > 0) problems.push(expected);
      return Object.freeze({ kind });
    case "lmdb":
      if (where === "") problems.push(`${store.name}: lmdb: needs a directory, e.g. lmdb:kv-data`);
      return Object.freeze({ kind, path: where });
    case "etcd": {
      const endpoints = where.split(",");
      for (const url of endpoints) {
        if (!/^https?:\/\/[^/\s]+$/.test(url))
          problems.push(`${store.name}: etcd endpoints must be http(s)://host:port, got ${JSON.stringify(url)}`);
      }
      const prefix = etcdPrefix?.value ?? DEFAULT_ETCD_PREFIX;
      return Object.freeze({ kind, endpoints: Object.freeze(endpoints), prefix });
    }
    default:
      problems.push(expected);
      return Object.freeze({ kind: "memory" });
  }
}
