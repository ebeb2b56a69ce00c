import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import type { Config } from "./config";

/** The certificate or key files could not serve HTTPS; the message says which and why, in one line. */
export class TlsConfigError extends Error {
  readonly code = "ERR_KV_TLS_CONFIG";
  override name = "TlsConfigError";
}

/**
 * Reads `KV_TLS_CERT` and `KV_TLS_KEY` and checks that they make a working TLS context (PEM, and
 * the key belongs to the certificate), so that a bad file stops the server at start rather than
 * failing every handshake later. Throws `TlsConfigError`.
 */
export function loadTls(tls: NonNullable<Config["tls"]>): { cert: Buffer; key: Buffer } {
  const read = (name: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new TlsConfigError(`${name} ${path} cannot be read: ${(err as Error).message}`, { cause: err });
    }
  };
  const cert = read("KV_TLS_CERT", tls.certPath);
  const key = read("KV_TLS_KEY", tls.keyPath);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new TlsConfigError(
      `KV_TLS_CERT ${tls.certPath} and KV_TLS_KEY ${tls.keyPath} do not make a TLS certificate and its key: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  return { cert, key };
}
