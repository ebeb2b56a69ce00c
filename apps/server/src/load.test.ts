import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { type Clerk, createClerk } from "@kv/clerk";
import { hasCode } from "@kv/rpc";
import { startServerProcess } from "@kv/testkit";
import { describe, expect, it, onTestFinished } from "vitest";

const CLERKS = 256;
const LOAD_SECONDS = Number(process.env.KV_LOAD_SECONDS ?? 30);

describe("the built server on the memory store under load", () => {
  it(
    `holds ${CLERKS} concurrent clerks for ${LOAD_SECONDS} s: no error but 503, and no acknowledged write lost`,
    async () => {
      const server = await startServerProcess();
      onTestFinished(async () => void (await server.stop()));
      const clerks: Clerk[] = Array.from({ length: CLERKS }, () =>
        createClerk({ endpoints: [server.url], backoff: { baseMs: 10, maxMs: 200 } }),
      );
      onTestFinished(() => Promise.all(clerks.map((c) => c.close())).then(() => undefined));

      // Every retry a clerk makes, by the error that caused it: only "not applied" (503) may appear.
      const retries = new Map<string, number>();
      const onRetry = (message: unknown) => {
        const { error } = message as { error: unknown };
        const code = hasCode(error, "ERR_KV_UNAVAILABLE") ? "ERR_KV_UNAVAILABLE" : String((error as { code?: unknown }).code);
        retries.set(code, (retries.get(code) ?? 0) + 1);
      };
      subscribe("kv:clerk:retry", onRetry);
      onTestFinished(() => void unsubscribe("kv:clerk:retry", onRetry));

      const latenciesMs: number[] = [];
      const acknowledged = new Map<string, { value: string; version: number }>();
      const problems: string[] = [];
      const end = performance.now() + LOAD_SECONDS * 1_000;
      await Promise.all(
        clerks.map(async (clerk, c) => {
          const key = `load-${c}`;
          let version = 0;
          for (let i = 0; performance.now() < end; i++) {
            const started = performance.now();
            if (i % 4 === 3) {
              const seen = await clerk.get(key);
              if (seen.err !== "OK" || seen.version !== version)
                problems.push(`${key}: read ${JSON.stringify(seen)} after version ${version}`);
            } else {
              const value = `${c}.${i}`;
              const r = await clerk.put(key, value, version);
              if (r.err !== "OK") problems.push(`${key}: put at ${version} answered ${r.err}`);
              else {
                version = r.version;
                acknowledged.set(key, { value, version });
              }
            }
            latenciesMs.push(performance.now() - started);
          }
        }),
      );

      // Read back with a fresh clerk: every acknowledged write is there.
      const reader = createClerk({ endpoints: [server.url] });
      onTestFinished(() => reader.close());
      for (const [key, { value, version }] of acknowledged) {
        const now = await reader.get(key);
        if (now.err !== "OK" || now.value !== value || now.version !== version)
          problems.push(`${key}: acknowledged ${value}@${version}, read ${JSON.stringify(now)}`);
      }

      latenciesMs.sort((a, b) => a - b);
      const p = (q: number) => (latenciesMs[Math.min(latenciesMs.length - 1, Math.floor(q * latenciesMs.length))] as number).toFixed(1);
      console.log(
        `load: ${CLERKS} clerks, ${LOAD_SECONDS} s, ${latenciesMs.length} ops (${Math.round(latenciesMs.length / LOAD_SECONDS)}/s), ` +
          `p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, retries ${JSON.stringify(Object.fromEntries(retries))}`,
      );
      expect(problems).toEqual([]);
      expect(acknowledged.size).toBe(CLERKS);
      expect([...retries.keys()].filter((code) => code !== "ERR_KV_UNAVAILABLE")).toEqual([]);
    },
    (LOAD_SECONDS + 60) * 1_000,
  );
});
