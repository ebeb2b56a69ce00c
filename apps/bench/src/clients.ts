// Each system through the client its users would pick, behind one small interface, checking
// every reply: a put that was not applied at exactly version + 1, or a read that does not see
// the version written, throws — a benchmark that counts failures as operations measures nothing.
import { randomUUID } from "node:crypto";
import type { Clerk } from "@kv/clerk";
import { kvPath } from "@kv/rpc";
import type { Etcd3 } from "etcd3";
import type Redis from "ioredis";
import { Pool } from "undici";

/** Conditional put and read on versioned keys, as every system under test offers them. */
export interface VersionedClient {
  /** Puts `value` if `key` is at `version` (0: absent); throws unless that put was applied. */
  put(key: string, value: string, version: number): Promise<void>;
  /** Reads `key`; throws unless it is at `version`. */
  get(key: string, version: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * kv's protocol over undici (a pool of `connections` keep-alive sockets, no pipelining), the
 * bodies the clerk sends: `{ value, version, id }` with a fresh put id (`ids: false`: none, so
 * the server keeps no completion record). The bare Fastify route speaks the same protocol.
 */
export function createHttpClient(url: string, connections: number, options: { ids?: boolean } = {}): VersionedClient {
  const withIds = options.ids !== false;
  const pool = new Pool(url, { connections, pipelining: 1 });
  return {
    async put(key, value, version) {
      const res = await pool.request({
        method: "PUT",
        path: kvPath(key),
        headers: { "content-type": "application/json" },
        body: JSON.stringify(withIds ? { value, version, id: randomUUID() } : { value, version }),
      });
      const text = await res.body.text();
      const body = JSON.parse(text) as { err?: string; version?: number };
      if (res.statusCode !== 200 || body.err !== "OK" || body.version !== version + 1) {
        throw new Error(`PUT ${key} at version ${version} on ${url}: ${res.statusCode} ${text}`);
      }
    },
    async get(key, version) {
      const res = await pool.request({ method: "GET", path: kvPath(key) });
      const text = await res.body.text();
      const body = JSON.parse(text) as { err?: string; version?: number };
      if (res.statusCode !== 200 || body.err !== "OK" || body.version !== version) {
        throw new Error(`GET ${key} on ${url}: ${res.statusCode} ${text}, expected version ${version}`);
      }
    },
    close: () => pool.close(),
  };
}

/** kv through `@kv/clerk` (retries, put ids, failover), one clerk for every worker. */
export function createClerkClient(clerk: Clerk): VersionedClient {
  return {
    async put(key, value, version) {
      const r = await clerk.put(key, value, version);
      if (r.err !== "OK" || r.version !== version + 1) throw new Error(`clerk put ${key} at version ${version}: ${JSON.stringify(r)}`);
    },
    async get(key, version) {
      const r = await clerk.get(key);
      if (r.err !== "OK" || r.version !== version) throw new Error(`clerk get ${key}: ${JSON.stringify(r)}, expected version ${version}`);
    },
    close: () => clerk.close(),
  };
}

/**
 * etcd through `etcd3` (gRPC, one channel): a put is the transaction `if (Version == v) then put`
 * — etcd counts a key's versions from 1 at creation and compares an absent key as version 0,
 * exactly kv's numbering; a read is a range, linearizable (etcd3's default).
 */
export function createEtcdClient(client: Etcd3, prefix: string): VersionedClient {
  const ns = client.namespace(prefix);
  return {
    async put(key, value, version) {
      const r = await ns.if(key, "Version", "==", version).then(ns.put(key).value(value)).commit();
      if (!r.succeeded) throw new Error(`etcd txn on ${prefix}${key} at version ${version} did not succeed`);
    },
    async get(key, version) {
      const r = await ns.get(key).exec();
      const found = r.kvs[0]?.version;
      if (found !== String(version)) throw new Error(`etcd get ${prefix}${key}: version ${found}, expected ${version}`);
    },
    close: async () => undefined, // the caller owns the Etcd3 client
  };
}

// Compare-and-set in one Lua script, atomic in Redis: the hash holds the value and the version.
// Replies the new version, or -1 when the version named is not the key's (absent = 0).
const COMPARE_AND_SET = `
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', current + 1)
return current + 1`;

type CasRedis = Redis & { kvCompareAndSet(key: string, value: string, version: number): Promise<number> };

/** Redis through `ioredis` (one connection; commands of concurrent callers share it), puts by the Lua compare-and-set. */
export function createRedisClient(redis: Redis): VersionedClient {
  redis.defineCommand("kvCompareAndSet", { numberOfKeys: 1, lua: COMPARE_AND_SET });
  const cas = redis as CasRedis;
  return {
    async put(key, value, version) {
      const next = await cas.kvCompareAndSet(key, value, version);
      if (next !== version + 1) throw new Error(`redis compare-and-set ${key} at version ${version}: ${next}`);
    },
    async get(key, version) {
      const found = await redis.hget(key, "version");
      if (found !== String(version)) throw new Error(`redis get ${key}: version ${found}, expected ${version}`);
    },
    close: async () => undefined, // the caller owns the connection
  };
}
