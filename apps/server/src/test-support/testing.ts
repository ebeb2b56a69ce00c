// Helpers for this app's own tests: a real server on a loopback port and raw-path requests.
import { kvPath } from "@kv/rpc";
import { MemoryStore, type Store } from "@kv/server";
import type { FastifyInstance } from "fastify";
import { Pool } from "undici";
import { setTimeout as sleep } from "node:timers/promises";
import { type AppOptions, buildApp } from "../app";
import { type Config, parseConfig } from "../config";

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

export interface TestServer {
  app: FastifyInstance;
  store: Store;
  base: string;
  /** Sends one request with `path` as it is (no URL normalisation); JSON bodies are encoded. */
  request(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply>;
  get(key: string): Promise<Reply>;
  put(key: string, body: unknown): Promise<Reply>;
  /** Closes the client pool and the app (which closes the store). */
  close(): Promise<void>;
}

/**
 * Starts the app on 127.0.0.1, port 0, over `store` (by default a fresh MemoryStore keeping
 * completion records as `env` says); with
 * `options.https`, over HTTPS, its requests trusting `options.ca`. The caller closes it.
 */
export async function startTestServer(
  env: Record<string, string> = {},
  given?: Store,
  options: AppOptions & { ca?: string } = {},
): Promise<TestServer> {
  const config: Config = parseConfig({ KV_LOG_LEVEL: "silent", ...env }, []);
  const store = given ?? new MemoryStore({ retentionMs: config.idRetentionMs, maxIds: config.maxIds });
  const { ca, ...appOptions } = options;
  const app = await buildApp(config, store, appOptions);
  const base = await app.listen({ host: "127.0.0.1", port: 0 });
  const pool = new Pool(base, { connections: 128, ...(ca !== undefined && { connect: { ca } }) });
  const request = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const isRaw = typeof body === "string" || Buffer.isBuffer(body);
    const res = await pool.request({
      method: method as "GET",
      path,
      headers: body === undefined || isRaw ? headers : { "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : isRaw ? (body as string) : JSON.stringify(body),
    });
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {}
    return { status: res.statusCode, headers: res.headers, body: parsed };
  };
  return {
    app,
    store,
    base,
    request,
    get: (key) => request("GET", kvPath(key)),
    put: (key, body) => request("PUT", kvPath(key), body),
    close: async () => {
      await pool.close();
      await app.close();
    },
  };
}

/** Resolves once `condition` holds, checking every 25 ms; rejects with `explain()` after `timeoutMs`. */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  explain: () => string | Promise<string>,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`${await explain()} after ${timeoutMs} ms`);
    await sleep(25);
  }
}
