import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "./config";

const problemsOf = (env: Record<string, string>, argv: string[] = []): readonly string[] => {
  try {
    parseConfig(env, argv);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
};

describe("parseConfig", () => {
  it("has the contract's defaults, on the durable store lmdb:kv-data", () => {
    expect(parseConfig({}, [])).toEqual({
      host: "127.0.0.1",
      port: 7070,
      store: { kind: "lmdb", path: "kv-data" },
      authToken: undefined,
      isMetricsAuthRequired: false,
      tls: undefined,
      maxKeyBytes: 4096,
      maxValueBytes: 1048576,
      maxConnections: 10_000,
      maxInFlight: 1_024,
      maxWaiters: 10_000,
      idRetentionMs: 120_000,
      maxIds: 1_000_000,
      recordRefusals: true,
      maxEventLoopDelayMs: 1_000,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      keepAliveTimeoutMs: 72_000,
      logLevel: "info",
    });
  });

  it("reads every KV_* variable", () => {
    const config = parseConfig(
      {
        KV_HOST: "::1",
        KV_PORT: "0",
        KV_STORE: "memory",
        KV_AUTH_TOKEN: "t",
        KV_MAX_KEY_BYTES: "100",
        KV_MAX_VALUE_BYTES: "0",
        KV_LOG_LEVEL: "warn",
      },
      [],
    );
    expect(config).toMatchObject({ host: "::1", port: 0, authToken: "t", maxKeyBytes: 100, maxValueBytes: 0, logLevel: "warn" });
  });

  it.each([
    ["memory", {}, { kind: "memory" }],
    ["lmdb:/var/lib/kv", {}, { kind: "lmdb", path: "/var/lib/kv" }],
    ["lmdb:data.v1", {}, { kind: "lmdb", path: "data.v1" }],
    ["etcd:http://10.0.0.1:2379", {}, { kind: "etcd", endpoints: ["http://10.0.0.1:2379"], prefix: "kv/" }],
    [
      "etcd:http://a:2379,https://b:2379",
      { KV_ETCD_PREFIX: "team-a/" },
      { kind: "etcd", endpoints: ["http://a:2379", "https://b:2379"], prefix: "team-a/" },
    ],
  ])("reads KV_STORE=%s", (value, extra, store) => {
    expect(parseConfig({ KV_STORE: value, ...extra }, []).store).toEqual(store);
  });

  it("reads the TLS files, limits, timeouts and metrics setting", () => {
    const config = parseConfig(
      {
        KV_TLS_CERT: "/etc/kv/cert.pem",
        KV_TLS_KEY: "/etc/kv/key.pem",
        KV_AUTH_TOKEN: "t",
        KV_METRICS_AUTH: "true",
        KV_MAX_CONNECTIONS: "50",
        KV_MAX_IN_FLIGHT: "8",
        KV_MAX_EVENT_LOOP_DELAY_MS: "0",
        KV_HEADERS_TIMEOUT_MS: "1000",
        KV_REQUEST_TIMEOUT_MS: "2000",
        KV_KEEP_ALIVE_TIMEOUT_MS: "3000",
        KV_ID_RETENTION_MS: "5000",
        KV_MAX_IDS: "100",
      },
      [],
    );
    expect(config).toMatchObject({
      idRetentionMs: 5000,
      maxIds: 100,
      tls: { certPath: "/etc/kv/cert.pem", keyPath: "/etc/kv/key.pem" },
      isMetricsAuthRequired: true,
      maxConnections: 50,
      maxInFlight: 8,
      maxEventLoopDelayMs: 0,
      headersTimeoutMs: 1000,
      requestTimeoutMs: 2000,
      keepAliveTimeoutMs: 3000,
    });
  });

  it("lets a --flag win over its variable", () => {
    const config = parseConfig({ KV_PORT: "1", KV_LOG_LEVEL: "warn" }, ["--port", "2", "--log-level=error", "--max-key-bytes", "10"]);
    expect(config).toMatchObject({ port: 2, logLevel: "error", maxKeyBytes: 10 });
  });

  it("returns a frozen object", () => {
    expect(Object.isFrozen(parseConfig({}, []))).toBe(true);
  });

  it.each([
    [{ KV_PORT: "abc" }, 'KV_PORT must be an integer from 0 to 65535, got "abc"'],
    [{ KV_PORT: "65536" }, "KV_PORT must be an integer from 0 to 65535"],
    [{ KV_PORT: "-1" }, "KV_PORT must be an integer"],
    [{ KV_PORT: "80.5" }, "KV_PORT must be an integer"],
    [{ KV_PORT: "" }, "KV_PORT must be an integer"],
    [{ KV_MAX_KEY_BYTES: "0" }, "KV_MAX_KEY_BYTES must be an integer from 1 to 4096"],
    [{ KV_MAX_VALUE_BYTES: "1e6" }, "KV_MAX_VALUE_BYTES must be an integer"],
    [{ KV_ID_RETENTION_MS: "0" }, "KV_ID_RETENTION_MS must be an integer from 1 to 86400000"],
    [{ KV_MAX_IDS: "lots" }, "KV_MAX_IDS must be an integer from 1 to 100000000"],
    [{ KV_LOG_LEVEL: "loud" }, "KV_LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent"],
    [{ KV_STORE: "redis:x" }, 'KV_STORE must be "memory", "lmdb:<dir>" or "etcd:<url>[,<url>…]", got "redis:x"'],
    [{ KV_STORE: "memory:x" }, 'KV_STORE must be "memory"'],
    [{ KV_STORE: "lmdb:" }, "KV_STORE: lmdb: needs a directory"],
    [{ KV_STORE: "etcd:" }, 'KV_STORE: etcd endpoints must be http(s)://host:port, got ""'],
    [{ KV_STORE: "etcd:http://a:2379,127.0.0.1:2379" }, 'got "127.0.0.1:2379"'],
    [{ KV_STORE: "memory", KV_ETCD_PREFIX: "p/" }, "KV_ETCD_PREFIX applies only to an etcd store"],
    [{ KV_HOST: "" }, "KV_HOST must not be empty"],
    [{ KV_AUTH_TOKEN: "" }, "KV_AUTH_TOKEN must not be empty"],
    [{ KV_TLS_CERT: "/x.pem" }, "KV_TLS_CERT and KV_TLS_KEY go together"],
    [{ KV_TLS_KEY: "/k.pem" }, "KV_TLS_CERT and KV_TLS_KEY go together"],
    [{ KV_METRICS_AUTH: "yes" }, 'KV_METRICS_AUTH must be true or false, got "yes"'],
    [{ KV_METRICS_AUTH: "true" }, "KV_METRICS_AUTH=true needs KV_AUTH_TOKEN"],
    [{ KV_MAX_IN_FLIGHT: "0" }, "KV_MAX_IN_FLIGHT must be an integer from 1"],
    [{ KV_MAX_CONNECTIONS: "many" }, "KV_MAX_CONNECTIONS must be an integer"],
    [{ KV_MAX_EVENT_LOOP_DELAY_MS: "-5" }, "KV_MAX_EVENT_LOOP_DELAY_MS must be an integer from 0"],
    [
      { KV_HEADERS_TIMEOUT_MS: "5000", KV_REQUEST_TIMEOUT_MS: "4000" },
      "KV_REQUEST_TIMEOUT_MS must be at least KV_HEADERS_TIMEOUT_MS (5000)",
    ],
  ])("refuses %j, naming the variable", (env, message) => {
    const problems = problemsOf(env);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(message);
  });

  it("names the flag when the bad value came from a flag", () => {
    expect(problemsOf({ KV_PORT: "1" }, ["--port", "x"])).toEqual(['--port must be an integer from 0 to 65535, got "x"']);
  });

  it("reports every problem at once", () => {
    expect(problemsOf({ KV_PORT: "x", KV_LOG_LEVEL: "y" }, ["--nope"])).toHaveLength(3);
  });
});
