// Helpers for this app's own tests: a real server on a loopback port and raw-path requests.
import { kvPath } from "@kv/rpc";
import { MemoryStore, type Store } from "@kv/server";
import type { FastifyInstance } from "fastify";
import { Pool } from "undici";
import { buildApp } from "./app";
import { type Config, parseConfig } from "./config";

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

/** Starts the app on 127.0.0.1, port 0, over `store` (a fresh MemoryStore by default). The caller closes it. */
export async function startTestServer(env: Record<string, string> = {}, store: Store = new MemoryStore()): Promise<TestServer> {
  const config: Config = parseConfig({ KV_LOG_LEVEL: "silent", ...env }, []);
  const app = await buildApp(config, store);
  const base = await app.listen({ host: "127.0.0.1", port: 0 });
  const pool = new Pool(base, { connections: 128 });
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
