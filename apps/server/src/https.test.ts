import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClerk } from "@kv/clerk";
import { createTestCertificates, startServerProcess } from "@kv/testkit";
import { describe, expect, it, onTestFinished } from "vitest";

const main = fileURLToPath(new URL("../dist/main.js", import.meta.url));

/** A directory of PEM files for this test, removed when it ends. */
function pemFiles(files: Record<string, string>): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), "kv-https-"));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return Object.fromEntries(
    Object.entries(files).map(([name, text]) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return [name, path];
    }),
  );
}

/** Runs the built server until it exits on its own; its exit code and what it wrote to stderr. */
async function startFailing(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [main], {
    env: { PATH: process.env.PATH, KV_PORT: "0", KV_STORE: "memory", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  onTestFinished(() => void child.kill("SIGKILL"));
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  return { code, stderr };
}

describe("HTTPS (KV_TLS_CERT, KV_TLS_KEY)", () => {
  it("serves the protocol over HTTPS to a clerk that trusts the private CA", async () => {
    const { ca, cert, key } = createTestCertificates("127.0.0.1");
    const files = pemFiles({ "cert.pem": cert, "key.pem": key });
    const server = await startServerProcess({
      env: { KV_TLS_CERT: files["cert.pem"] as string, KV_TLS_KEY: files["key.pem"] as string },
      tlsCa: ca,
    });
    onTestFinished(async () => void (await server.stop()));
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const clerk = createClerk({ endpoints: [server.url], tls: { ca } });
    onTestFinished(() => clerk.close());
    expect(await clerk.put("secure", "v", 0)).toEqual({ err: "OK", version: 1, revision: expect.any(Number) });
    expect(await clerk.get("secure")).toEqual({
      err: "OK",
      value: "v",
      version: 1,
      modRevision: expect.any(Number),
      createRevision: expect.any(Number),
    });
    // A client that does not trust the CA gets no answer: the handshake fails.
    const untrusting = createClerk({ endpoints: [server.url], attemptTimeoutMs: 500 });
    onTestFinished(() => untrusting.close());
    await expect(untrusting.get("secure", { signal: AbortSignal.timeout(500) })).rejects.toMatchObject({ name: "AbortError" });
  });

  it.each([
    [
      "a certificate file that does not exist",
      () => ({ cert: "/nonexistent/cert.pem", key: "KEY" }),
      /^kv-server: cannot serve HTTPS: KV_TLS_CERT \/nonexistent\/cert\.pem cannot be read: ENOENT/,
    ],
    [
      "a key that belongs to another certificate",
      () => ({ cert: "CERT", key: "OTHER_KEY" }),
      /^kv-server: cannot serve HTTPS: KV_TLS_CERT .* and KV_TLS_KEY .* do not make a TLS certificate and its key: .*key values mismatch/,
    ],
    [
      "files that are not PEM",
      () => ({ cert: "GARBAGE", key: "GARBAGE" }),
      /^kv-server: cannot serve HTTPS: KV_TLS_CERT .* do not make a TLS certificate and its key/,
    ],
  ])("exits at start with one line for %s", async (_, choose, message) => {
    const mine = createTestCertificates("127.0.0.1");
    const other = createTestCertificates("127.0.0.1");
    const files = pemFiles({ CERT: mine.cert, KEY: mine.key, OTHER_KEY: other.key, GARBAGE: "not a certificate\n" });
    const { cert, key } = choose();
    const { code, stderr } = await startFailing({ KV_TLS_CERT: files[cert] ?? cert, KV_TLS_KEY: files[key] ?? key });
    expect(code).toBe(2);
    const lines = stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
  });
});
