import { spawn } from "node:child_process";
import { constants } from "node:os";
import { parseArgs } from "node:util";
import { type Clerk, createClerk, type GetResult, hasCode } from "@kv/clerk";
import { createLock, LockNotHeldError } from "@kv/lock";

/** `kv`'s exit codes: an expected outcome each, distinct from failures and from usage errors. */
export const ExitCode = {
  OK: 0,
  /** The server could not be reached in time, or refused for good (token, limits). */
  FAILURE: 1,
  /** Bad command line. */
  USAGE: 2,
  ErrNoKey: 3,
  ErrVersion: 4,
  /** A put got no reply and its retry met ErrVersion: it may have been applied. */
  ErrMaybe: 5,
  /** `kv lock`: the lease could not be renewed; the command was stopped. */
  LEASE_LOST: 6,
} as const;

/** Where `kv` writes and what it reads besides its arguments. */
export interface CliContext {
  env: Record<string, string | undefined>;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Aborts on SIGINT/SIGTERM: a wait ends, a locked command is stopped and the lock released. */
  signal?: AbortSignal;
}

export const USAGE = `Usage:
  kv get <key>                              print the key's value
  kv put <key> <value> [--version <n>]      write it: at version n only, or over whatever is there
  kv watch <key> [--count <n>]              print the value now and at every change
  kv lock <key> [--ttl 15s] -- <command…>   run the command while holding the lock

Options:
  --endpoints <urls>   comma-separated server URLs (env KV_ENDPOINTS; default http://127.0.0.1:7070)
  --token <token>      bearer token (env KV_TOKEN)
  --json               one JSON object per line: {"err","value","version"}
  --timeout <d>        get and put give up after this (default 30s)
  --ttl <d>            kv lock's lease (default 15s): a kv that dies loses the lock after it
  -h, --help           this text

Durations: 500ms, 15s, 2m, 1h (a bare number is seconds).
Exit codes: 0 OK · 1 failure (unreachable, refused) · 2 usage · 3 ErrNoKey · 4 ErrVersion ·
5 ErrMaybe · 6 lock lost; kv lock otherwise exits with the command's code.
`;

const DEFAULT_ENDPOINT = "http://127.0.0.1:7070";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_TTL_MS = 15_000;
// A watch's long-poll: the server's limit is 60 s; shorter notices a dead endpoint sooner.
const WATCH_WAIT_MS = 30_000;
// How long a command stopped on a lost lock gets between SIGTERM and SIGKILL.
const KILL_GRACE_MS = 10_000;

class UsageError extends Error {}

/** Runs `kv` with these arguments (after the program name) and resolves with its exit code. */
export async function runCli(argv: readonly string[], context: CliContext): Promise<number> {
  const dashes = argv.indexOf("--");
  const own = dashes === -1 ? argv : argv.slice(0, dashes);
  const command = dashes === -1 ? [] : argv.slice(dashes + 1);
  let clerk: Clerk | undefined;
  try {
    const { values, positionals } = parseArgs({
      args: [...own],
      allowPositionals: true,
      options: {
        endpoints: { type: "string" },
        token: { type: "string" },
        json: { type: "boolean", default: false },
        version: { type: "string" },
        timeout: { type: "string" },
        ttl: { type: "string" },
        count: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
    const [verb, ...rest] = positionals;
    if (values.help || verb === "help") {
      context.stdout(USAGE);
      return ExitCode.OK;
    }
    const endpoints = (values.endpoints ?? context.env.KV_ENDPOINTS ?? DEFAULT_ENDPOINT).split(",").map((s) => s.trim()).filter(Boolean);
    const token = values.token ?? (context.env.KV_TOKEN || undefined);
    const out = new Output(context, values.json);
    const args = (names: string[]) => {
      if (rest.length !== names.length) throw new UsageError(`${verb} takes ${names.map((n) => `<${n}>`).join(" ")}`);
      return rest as string[];
    };
    const open = () => {
      try {
        clerk = createClerk(token === undefined ? { endpoints } : { endpoints, token });
      } catch (err) {
        throw new UsageError(err instanceof Error ? err.message : String(err));
      }
      return clerk;
    };
    const timeoutMs = values.timeout === undefined ? DEFAULT_TIMEOUT_MS : parseDuration("--timeout", values.timeout);
    switch (verb) {
      case "get": {
        const [key] = args(["key"]);
        return await withDeadline(timeoutMs, context.signal, (signal) => get(open(), key as string, out, signal));
      }
      case "put": {
        const [key, value] = args(["key", "value"]);
        const version = values.version === undefined ? undefined : parseVersion(values.version);
        return await withDeadline(timeoutMs, context.signal, (signal) => put(open(), key as string, value as string, version, out, signal));
      }
      case "watch": {
        const [key] = args(["key"]);
        const count = values.count === undefined ? Number.POSITIVE_INFINITY : parseCount(values.count);
        return await watch(open(), key as string, count, out, context.signal);
      }
      case "lock": {
        const [key] = args(["key"]);
        if (command.length === 0) throw new UsageError("lock needs a command after --, e.g. kv lock jobs/nightly -- ./nightly.sh");
        const ttlMs = values.ttl === undefined ? DEFAULT_TTL_MS : parseDuration("--ttl", values.ttl);
        return await lock(open(), key as string, ttlMs, command, out, context);
      }
      case undefined:
        throw new UsageError("no command given");
      default:
        throw new UsageError(`unknown command ${JSON.stringify(verb)}`);
    }
  } catch (err) {
    if (err instanceof UsageError || hasCode(err, "ERR_PARSE_ARGS_UNKNOWN_OPTION") || hasCode(err, "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") || hasCode(err, "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL")) {
      context.stderr(`kv: ${(err as Error).message}\nRun kv --help for usage.\n`);
      return ExitCode.USAGE;
    }
    context.stderr(`kv: ${describe(err)}\n`);
    return ExitCode.FAILURE;
  } finally {
    await clerk?.close();
  }
}

/** Prints results as the user asked: the value alone, or one JSON object per line. */
class Output {
  readonly #context: CliContext;
  readonly #json: boolean;

  constructor(context: CliContext, json: boolean) {
    this.#context = context;
    this.#json = json;
  }

  /** Prints the outcome and returns its exit code. `text` is the plain form of an OK outcome. */
  result(key: string, result: GetResult | { err: string; version?: number }, text: string, isExplained = false): number {
    if (this.#json) this.#context.stdout(`${JSON.stringify(result)}\n`);
    if (result.err === "OK") {
      if (!this.#json) this.#context.stdout(`${text}\n`);
      return ExitCode.OK;
    }
    if (!this.#json && !isExplained) this.#context.stderr(`kv: ${key}: ${result.err} (${EXPLANATIONS[result.err] ?? "refused"})\n`);
    return ExitCode[result.err as "ErrNoKey" | "ErrVersion" | "ErrMaybe"] ?? ExitCode.FAILURE;
  }

  note(text: string): void {
    this.#context.stderr(`kv: ${text}\n`);
  }
}

const EXPLANATIONS: Record<string, string> = {
  ErrNoKey: "no such key",
  ErrVersion: "the key is at another version",
  ErrMaybe: "no reply came, and the key has moved on: the put may or may not have been applied",
};

async function get(clerk: Clerk, key: string, out: Output, signal: AbortSignal): Promise<number> {
  const r = await answerWithin(clerk.get(key, { signal }), signal);
  return out.result(key, r, r.err === "OK" ? r.value : "");
}

/** At `version`, or — like `etcdctl put` — over whatever version the key is at. */
async function put(clerk: Clerk, key: string, value: string, version: number | undefined, out: Output, signal: AbortSignal): Promise<number> {
  const attempt = async () => {
    if (version !== undefined) return clerk.put(key, value, version, { signal });
    while (true) {
      const seen = await clerk.get(key, { signal });
      const r = await clerk.put(key, value, seen.err === "OK" ? seen.version : 0, { signal });
      if (r.err !== "ErrVersion" && r.err !== "ErrNoKey") return r; // another writer came between: read again
    }
  };
  try {
    const r = await answerWithin(attempt(), signal);
    return out.result(key, r, r.err === "OK" ? String(r.version) : "");
  } catch (err) {
    // A put given up on may have been sent, and applied: that is ErrMaybe, not a failure.
    if (hasCode(err, "ERR_KV_NO_ANSWER")) {
      out.note(`${key}: no answer in time; the put may or may not have been applied`);
      out.result(key, { err: "ErrMaybe" }, "", true);
      return ExitCode.ErrMaybe;
    }
    throw err;
  }
}

async function watch(clerk: Clerk, key: string, count: number, out: Output, signal: AbortSignal | undefined): Promise<number> {
  let printed = 0;
  let version: number | undefined;
  try {
    while (printed < count) {
      const options = version === undefined ? { signal } : { signal, waitVersion: version, waitMs: WATCH_WAIT_MS };
      const r = await clerk.get(key, options);
      const now = r.err === "OK" ? r.version : 0;
      if (now === version) continue; // the wait ran out
      version = now;
      if (r.err === "OK" || printed === 0) {
        if (r.err === "ErrNoKey") out.result(key, r, ""); // absent at first: say so, then wait for it
        else out.result(key, r, r.value);
        printed++;
      }
    }
    return ExitCode.OK;
  } catch (err) {
    if (signal?.aborted) return ExitCode.OK; // stopped by SIGINT/SIGTERM: a watch ends that way
    throw err;
  }
}

/** Runs `command` while holding the lock on `key`, and exits with its code. */
async function lock(clerk: Clerk, key: string, ttlMs: number, command: string[], out: Output, context: CliContext): Promise<number> {
  let held: ReturnType<typeof createLock>;
  try {
    held = createLock(clerk, key, { ttlMs });
  } catch (err) {
    throw new UsageError(`--ttl: ${describe(err)}`);
  }
  let hold: Awaited<ReturnType<typeof held.acquire>>;
  try {
    hold = await held.acquire(context.signal === undefined ? {} : { signal: context.signal });
  } catch (err) {
    if (context.signal?.aborted) return 130; // stopped while waiting, as by Ctrl-C
    throw err;
  }
  const [file, ...args] = command as [string, ...string[]];
  const child = spawn(file, args, { stdio: "inherit", env: { ...context.env, KV_LOCK_TOKEN: String(hold.token) } });
  let isLost = false;
  let killTimer: NodeJS.Timeout | undefined;
  const stop = () => {
    child.kill("SIGTERM");
    killTimer ??= setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS);
  };
  const onLost = () => {
    if (!hasCode(hold.signal.reason, "ERR_LOCK_LEASE_LOST")) return; // released: the command is done
    isLost = true;
    out.note(`lost the lock on ${key} (${describe(hold.signal.reason)}); stopping the command`);
    stop();
  };
  hold.signal.addEventListener("abort", onLost, { once: true });
  context.signal?.addEventListener("abort", stop, { once: true });
  const code = await new Promise<number>((resolve) => {
    child.once("error", (err) => {
      out.note(`cannot run ${file}: ${err.message}`);
      resolve(127);
    });
    child.once("exit", (exitCode, signal) => resolve(exitCode ?? 128 + (signal === null ? 0 : (constants.signals[signal] ?? 0))));
  });
  clearTimeout(killTimer);
  hold.signal.removeEventListener("abort", onLost);
  context.signal?.removeEventListener("abort", stop);
  if (isLost) return ExitCode.LEASE_LOST; // nothing to release: the key passes on by itself
  try {
    await held.release();
  } catch (err) {
    if (!(err instanceof LockNotHeldError)) throw err; // not held: the lease ran out as the command ended
  }
  return code;
}

/**
 * Aborts after `ms`, or with `outer`. Not `AbortSignal.any([AbortSignal.timeout(ms), outer])`:
 * on Node 20 that signal can miss the timeout's abort, and the call waits for ever.
 */
async function withDeadline<T>(ms: number, outer: AbortSignal | undefined, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`no answer within ${ms} ms`)), ms);
  const onAbort = () => controller.abort(outer?.reason);
  outer?.addEventListener("abort", onAbort, { once: true });
  try {
    return await call(controller.signal);
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener("abort", onAbort);
  }
}

/** `call`, or a `KvError`-like failure `ERR_KV_NO_ANSWER` when `signal` ended it. */
async function answerWithin<T>(call: Promise<T>, signal: AbortSignal): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (signal.aborted) throw Object.assign(new Error("no answer in time"), { code: "ERR_KV_NO_ANSWER" });
    throw err;
  }
}

/** `15s` → 15 000. Units ms, s, m, h; a bare number is seconds. */
export function parseDuration(name: string, text: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (match === null) throw new UsageError(`${name} must be a duration like 500ms, 15s or 2m, got ${JSON.stringify(text)}`);
  const ms = Number(match[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(match[2] ?? "s") as "ms"];
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new UsageError(`${name} must be more than 0, got ${JSON.stringify(text)}`);
  return ms;
}

function parseVersion(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n)) throw new UsageError(`--version must be an integer ≥ 0, got ${JSON.stringify(text)}`);
  return n;
}

function parseCount(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--count must be an integer ≥ 1, got ${JSON.stringify(text)}`);
  return n;
}

function describe(err: unknown): string {
  if (hasCode(err, "ERR_KV_NO_ANSWER")) return "no answer from the server in time (is it running? see --endpoints)";
  return err instanceof Error ? err.message : String(err);
}
