import { type Clerk, createClerk, type DeleteResult, type GetResult, type PutResult } from "@kv/clerk";
import { type Invocation, parseInvocation, UsageError } from "./args";
import { CANNOT_RUN, exitCodeOfSignal, LEASE_LOST, runLocked } from "./lock-command";

/** `kv`'s exit codes: an expected outcome each, distinct from failures and from usage errors. */
export const ExitCode = {
  OK: 0,
  /** No server answered in time, or the server refused for good (token, limits). */
  FAILURE: 1,
  /** Bad command line: nothing was sent. */
  USAGE: 2,
  ErrNoKey: 3,
  ErrVersion: 4,
  /** A put got no reply and its retry met ErrVersion, or it got no answer in time: it may have been applied. */
  ErrMaybe: 5,
  /** `kv lock`: the lease could not be renewed; the command was stopped. */
  LEASE_LOST,
  /** `kv lock`: the command could not be started. */
  CANNOT_RUN,
} as const;

/** Where `kv` writes and what it reads besides its arguments. */
export interface CliContext {
  env: Record<string, string | undefined>;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Aborts on SIGINT/SIGTERM (its reason: the signal's name): kv stops, 128 + the signal's number. */
  signal?: AbortSignal;
}

const USAGE = `Usage:
  kv get <key>                              print the key's value
  kv put <key> <value> [--version <n>]      write it: at version n only, or over whatever is there
  kv del <key> [--version <n>]              delete it: at version n only, or whatever version it is at
  kv watch <key> [--count <n>]              print the value now and after every change
  kv lock <key> [--ttl 15s] -- <command…>   run the command while holding the lock

Options:
  --endpoints <urls>   comma-separated server URLs (env KV_ENDPOINTS; default http://127.0.0.1:7070)
  --token <token>      bearer token (env KV_TOKEN)
  --json               one JSON object per line: {"err","value","version","modRevision","createRevision"} for get,
                       {"err","version","revision"} for put, {"err","revision"} for del
  --timeout <d>        give up when no server answers for this long (default 30s)
  --ttl <d>            kv lock's lease (default 15s): a kv that dies loses the lock after it
  -h, --help           this text

Durations: 500ms, 15s, 2m, 1h (a bare number is seconds).
Exit codes: 0 OK · 1 failure (unreachable, refused) · 2 usage · 3 ErrNoKey · 4 ErrVersion ·
5 ErrMaybe · 6 lock lost · 127 command not found; kv lock otherwise exits with the command's code.
`;

// A watch's long-poll: the server's limit is 60 s; shorter notices a dead endpoint sooner.
const WATCH_WAIT_MS = 30_000;

/** No server answered within `--timeout`. */
class NoAnswerError extends Error {
  readonly code = "ERR_KV_NO_ANSWER";
}

/** Runs `kv` with these arguments (after the program name) and resolves with its exit code. */
export async function runCli(argv: readonly string[], context: CliContext): Promise<number> {
  let invocation: Invocation;
  let clerk: Clerk;
  try {
    invocation = parseInvocation(argv, context.env);
    if (invocation.command.verb === "help") {
      context.stdout(USAGE);
      return ExitCode.OK;
    }
    const { endpoints, token } = invocation;
    clerk = createClerk(token === undefined ? { endpoints: [...endpoints] } : { endpoints: [...endpoints], token });
  } catch (err) {
    context.stderr(`kv: ${(err as Error).message}\nRun kv --help for usage.\n`);
    return ExitCode.USAGE;
  }
  const out = new Output(context, invocation.json);
  try {
    return await run(clerk, invocation, out, context);
  } catch (err) {
    if (context.signal?.aborted) return exitCodeOfSignal(context.signal.reason);
    if (err instanceof UsageError) {
      context.stderr(`kv: ${err.message}\nRun kv --help for usage.\n`);
      return ExitCode.USAGE;
    }
    out.failure(err);
    return ExitCode.FAILURE;
  } finally {
    await clerk.close();
  }
}

async function run(clerk: Clerk, { command, timeoutMs }: Invocation, out: Output, context: CliContext): Promise<number> {
  switch (command.verb) {
    case "get": {
      const r = await withDeadline(timeoutMs, context.signal, (signal) => clerk.get(command.key, { signal }));
      return out.got(command.key, r);
    }
    case "put":
      return put(clerk, command.key, command.value, command.version, timeoutMs, out, context.signal);
    case "del":
      return del(clerk, command.key, command.version, timeoutMs, out, context.signal);
    case "watch":
      return watch(clerk, command.key, command.count, timeoutMs, out, context.signal);
    case "lock": {
      const note = (text: string) => out.note(text);
      return runLocked(clerk, command.key, command.ttlMs, command.command, {
        env: context.env,
        note,
        signal: context.signal,
        releaseTimeoutMs: timeoutMs,
      });
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command.verb)}`);
  }
}

/** At `version`, or — like `etcdctl put` — over whatever version the key is at. */
async function put(
  clerk: Clerk,
  key: string,
  value: string,
  version: number | undefined,
  timeoutMs: number,
  out: Output,
  stop: AbortSignal | undefined,
): Promise<number> {
  try {
    const r = await withDeadline(timeoutMs, stop, async (signal) => {
      if (version !== undefined) return clerk.put(key, value, version, { signal });
      while (true) {
        const seen = await clerk.get(key, { signal });
        const r = await clerk.put(key, value, seen.err === "OK" ? seen.version : 0, { signal });
        if (r.err !== "ErrVersion" && r.err !== "ErrNoKey") return r; // another writer came between: read again
      }
    });
    return out.put(key, r);
  } catch (err) {
    // Given up on, or interrupted: it may have been sent, and applied.
    if (err instanceof NoAnswerError || stop?.aborted) {
      out.note(`${key}: ${stop?.aborted ? "interrupted" : "no answer in time"}; the put may or may not have been applied`);
      if (stop?.aborted) return exitCodeOfSignal(stop.reason);
      return out.put(key, { err: "ErrMaybe" }, true);
    }
    throw err;
  }
}

async function del(
  clerk: Clerk,
  key: string,
  version: number | undefined,
  timeoutMs: number,
  out: Output,
  stop: AbortSignal | undefined,
): Promise<number> {
  try {
    const r = await withDeadline(timeoutMs, stop, (signal) => clerk.delete(key, { signal, ...(version !== undefined && { version }) }));
    return out.deleted(key, r);
  } catch (err) {
    if (err instanceof NoAnswerError || stop?.aborted) {
      out.note(`${key}: ${stop?.aborted ? "interrupted" : "no answer in time"}; the delete may or may not have been applied`);
      if (stop?.aborted) return exitCodeOfSignal(stop.reason);
      return out.deleted(key, { err: "ErrMaybe" }, true);
    }
    throw err;
  }
}

/** Prints the value now, then after each change: a long-poll, so changes close together may be seen as one. */
async function watch(
  clerk: Clerk,
  key: string,
  count: number,
  timeoutMs: number,
  out: Output,
  stop: AbortSignal | undefined,
): Promise<number> {
  let printed = 0;
  let version: number | undefined;
  try {
    while (printed < count) {
      const wait = version === undefined ? {} : { waitVersion: version, waitMs: WATCH_WAIT_MS };
      const r = await withDeadline(timeoutMs + (version === undefined ? 0 : WATCH_WAIT_MS), stop, (signal) =>
        clerk.get(key, { ...wait, signal }),
      );
      const now = r.err === "OK" ? r.version : 0;
      if (now === version) continue; // the wait ran out with nothing new
      version = now;
      out.got(key, r, true);
      printed++;
    }
    return ExitCode.OK;
  } catch (err) {
    if (stop?.aborted) return ExitCode.OK; // a watch ends with SIGINT/SIGTERM
    throw err;
  }
}

/** Prints outcomes as the user asked: the value alone, or one JSON object per line. */
class Output {
  readonly #context: CliContext;
  readonly #json: boolean;

  constructor(context: CliContext, json: boolean) {
    this.#context = context;
    this.#json = json;
  }

  /** A get's outcome; `isWatch`: an absent key is a state to show, not a failure. */
  got(key: string, r: GetResult, isWatch = false): number {
    if (this.#json) this.#context.stdout(`${JSON.stringify(r)}\n`);
    if (r.err === "OK") {
      if (!this.#json) this.#context.stdout(`${r.value}\n`);
      return ExitCode.OK;
    }
    if (!this.#json) this.note(`${key}: ErrNoKey (${isWatch ? "absent; waiting for it" : "no such key"})`);
    return ExitCode.ErrNoKey;
  }

  /** A put's outcome; `isExplained`: a note on stderr said why already. */
  put(key: string, r: PutResult, isExplained = false): number {
    if (this.#json) this.#context.stdout(`${JSON.stringify(r)}\n`);
    switch (r.err) {
      case "OK":
        if (!this.#json) this.#context.stdout(`${r.version}\n`);
        return ExitCode.OK;
      case "ErrNoKey":
        if (!this.#json) this.note(`${key}: ErrNoKey (no such key)`);
        return ExitCode.ErrNoKey;
      case "ErrVersion":
        if (!this.#json) this.note(`${key}: ErrVersion (the key is at another version)`);
        return ExitCode.ErrVersion;
      case "ErrMaybe":
        if (!this.#json && !isExplained)
          this.note(`${key}: ErrMaybe (no reply came, and the key has moved on: the put may or may not have been applied)`);
        return ExitCode.ErrMaybe;
    }
  }

  /** A delete's outcome: the revision it made on stdout; as a put's otherwise. */
  deleted(key: string, r: DeleteResult, isExplained = false): number {
    if (r.err === "ErrMaybe" && !this.#json && !isExplained) {
      this.note(`${key}: ErrMaybe (no reply came: the delete may or may not have been applied)`);
      isExplained = true;
    }
    if (r.err !== "OK") return this.put(key, r, isExplained);
    this.#context.stdout(this.#json ? `${JSON.stringify(r)}\n` : `${r.revision}\n`);
    return ExitCode.OK;
  }

  /** A real failure: on stderr, and with --json also on stdout as `{"err":"Error","code","message"}`. */
  failure(err: unknown): void {
    const code = (err as { code?: unknown } | null)?.code;
    const message =
      err instanceof NoAnswerError
        ? `${err.message} (is a server running there? see --endpoints)`
        : err instanceof Error
          ? err.message
          : String(err);
    if (this.#json)
      this.#context.stdout(`${JSON.stringify({ err: "Error", code: typeof code === "string" ? code : "ERR_KV", message })}\n`);
    this.note(message);
  }

  note(text: string): void {
    this.#context.stderr(`kv: ${text}\n`);
  }
}

/**
 * `call` with a signal that aborts after `ms` or with `stop`; a call the deadline ended
 * rejects {@link NoAnswerError}. (Not `AbortSignal.any` with `AbortSignal.timeout`: on Node 20
 * that signal can miss the timeout, and the call waits for ever.)
 */
async function withDeadline<T>(ms: number, stop: AbortSignal | undefined, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new NoAnswerError(`no answer within ${ms} ms`)), ms);
  const onStop = () => controller.abort(stop?.reason);
  stop?.addEventListener("abort", onStop, { once: true });
  if (stop?.aborted) onStop();
  try {
    return await call(controller.signal);
  } catch (err) {
    if (controller.signal.reason instanceof NoAnswerError) throw controller.signal.reason;
    throw err;
  } finally {
    clearTimeout(timer);
    stop?.removeEventListener("abort", onStop);
  }
}
