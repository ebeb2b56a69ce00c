import { MAX_PUT_ID_LENGTH, MAX_VERSION, MAX_WAIT_MS } from "./err";
import { InvalidArgumentError, KvError } from "./errors";
import type { WaitOptions } from "./transport";

// The argument rules of contract §2–§4, in one place: the server, its HTTP routes and the clerk
// check the same things and say the same words. Each throws `InvalidArgumentError` (a
// `TypeError`, `ERR_INVALID_ARG_VALUE`), which the HTTP server answers 400 `ErrBadRequest`.

/**
 * A key: a non-empty string of well-formed Unicode (a lone surrogate has no UTF-8 form), and,
 * given `maxBytes`, at most that many UTF-8 bytes.
 */
export function checkKey(key: unknown, maxBytes?: number): asserts key is string {
  if (key === "") throw new InvalidArgumentError("key must not be empty");
  if (typeof key !== "string" || !key.isWellFormed()) {
    throw new InvalidArgumentError(`key must be a non-empty string of well-formed Unicode, got ${describe(key)}`);
  }
  if (maxBytes === undefined || key.length * 3 <= maxBytes) return; // no UTF-16 unit takes more than 3 bytes
  const bytes = Buffer.byteLength(key);
  if (bytes > maxBytes) throw new InvalidArgumentError(`key must be at most ${maxBytes} UTF-8 bytes, got ${bytes}`);
}

/**
 * A value: a string of well-formed Unicode. Given `maxBytes`, one over that many UTF-8 bytes
 * throws `KvError` `ERR_KV_TOO_LARGE` (413 over HTTP), whatever else is wrong with it.
 */
export function checkValue(value: unknown, maxBytes?: number): asserts value is string {
  if (typeof value !== "string") throw new InvalidArgumentError(`value must be a string of well-formed Unicode, got ${typeof value}`);
  if (maxBytes !== undefined && value.length * 3 > maxBytes) {
    const bytes = Buffer.byteLength(value);
    if (bytes > maxBytes) throw new KvError("ERR_KV_TOO_LARGE", `value must be at most ${maxBytes} UTF-8 bytes, got ${bytes}`);
  }
  if (!value.isWellFormed()) throw new InvalidArgumentError("value must be a string of well-formed Unicode");
}

/** A version a put names, or a long-poll waits on: a safe integer ≥ 0 (`name` says which). */
export function checkVersion(version: unknown, name = "version"): asserts version is number {
  if (!Number.isSafeInteger(version) || (version as number) < 0) {
    throw new InvalidArgumentError(`${name} must be a safe integer ≥ 0, got ${describe(version)}`);
  }
}

/** A put id: 1–64 characters (code points, as JSON Schema counts them) of well-formed Unicode. */
export function checkPutId(id: unknown): asserts id is string {
  const isSized = typeof id === "string" && id !== "" && (id.length <= MAX_PUT_ID_LENGTH || [...id].length <= MAX_PUT_ID_LENGTH);
  if (!isSized || !id.isWellFormed()) {
    throw new InvalidArgumentError(`id must be a string of 1–${MAX_PUT_ID_LENGTH} characters of well-formed Unicode, got ${describe(id)}`);
  }
}

/**
 * A long-poll: both of `waitVersion`, a version (at most 2^53 − 1), and `waitMs`, an integer from
 * 0 to 60 000 — numbers, or their decimal text from a query string; returns them as a wait.
 */
export function checkWait(waitVersion: unknown, waitMs: unknown): WaitOptions {
  if (waitVersion === undefined || waitMs === undefined) throw new InvalidArgumentError("waitVersion and waitMs go together");
  const version = fromDecimal(waitVersion);
  const ms = fromDecimal(waitMs);
  // Past the limits, the text as it came: a number that large may print as another.
  if (typeof version === "number" && version > MAX_VERSION) {
    throw new InvalidArgumentError(`waitVersion must be at most ${MAX_VERSION}, got ${String(waitVersion)}`);
  }
  checkVersion(version, "waitVersion");
  if (typeof ms === "number" && ms > MAX_WAIT_MS)
    throw new InvalidArgumentError(`waitMs must be at most ${MAX_WAIT_MS}, got ${String(waitMs)}`);
  if (!Number.isSafeInteger(ms) || (ms as number) < 0)
    throw new InvalidArgumentError(`waitMs must be an integer ≥ 0, got ${describe(waitMs)}`);
  return { version, ms: ms as number };
}

const fromDecimal = (x: unknown): unknown => (typeof x === "string" && /^\d{1,400}$/.test(x) ? Number(x) : x);

const describe = (x: unknown): string => (typeof x === "string" ? JSON.stringify(x.length > 40 ? `${x.slice(0, 40)}…` : x) : String(x));
