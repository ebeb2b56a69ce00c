import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** PEM texts, made for one test run. */
export interface TestCertificates {
  /** The private CA's certificate: what a client trusts (`tls.ca`). */
  ca: string;
  /** A certificate the CA signed for the host, and its key: what a server presents. */
  cert: string;
  key: string;
}

/**
 * A private CA and a server certificate it signed for `host` (an IP address, e.g. `127.0.0.1`),
 * made now with the `openssl` command, valid for a day.
 */
export function createTestCertificates(host: string): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), "kv-tls-"));
  try {
    const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "1",
      "-subj",
      "/CN=kv test CA",
    );
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", `/CN=${host}`);
    writeFileSync(join(dir, "ext.cnf"), `subjectAltName=IP:${host}\n`);
    openssl(
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "server.pem",
      "-days",
      "1",
      "-extfile",
      "ext.cnf",
    );
    const read = (name: string) => readFileSync(join(dir, name), "utf8");
    return { ca: read("ca.pem"), cert: read("server.pem"), key: read("server.key") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
