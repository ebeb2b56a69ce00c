import { parseArgs } from "node:util";

/** A bad command line: nothing was sent. */
export class UsageError extends Error {
  readonly code = "ERR_KV_USAGE";
  override name = "UsageError";
}

/** What one `kv` invocation is to do, read once from its arguments and environment. */
export type Command =
  | { verb: "help" }
  | { verb: "get"; key: string }
  | { verb: "put"; key: string; value: string; version: number | undefined }
  | { verb: "del"; key: string; version: number | undefined }
  | { verb: "watch"; key: string; count: number }
  | { verb: "lock"; key: string; ttlMs: number; command: readonly [string, ...string[]] };

export interface Invocation {
  readonly command: Command;
  readonly endpoints: readonly string[];
  readonly token: string | undefined;
  readonly json: boolean;
  readonly timeoutMs: number;
}

const DEFAULT_ENDPOINT = "http://127.0.0.1:7070";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_TTL_MS = 15_000;

const COMMON = ["endpoints", "token", "json", "timeout", "help"];
const OPTIONS_OF: Record<string, readonly string[]> = {
  get: COMMON,
  put: [...COMMON, "version"],
  del: [...COMMON, "version"],
  watch: [...COMMON, "count"],
  lock: [...COMMON, "ttl"],
};

/** Reads `argv` (after the program name) and the environment; throws {@link UsageError} on anything wrong. */
export function parseInvocation(argv: readonly string[], env: Record<string, string | undefined>): Invocation {
  // `--` ends the options: for `kv lock` what follows is the command, elsewhere more operands.
  const dashes = argv.indexOf("--");
  const afterDashes = dashes === -1 ? [] : argv.slice(dashes + 1);
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(dashes === -1 ? argv : argv.slice(0, dashes));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values } = parsed;
  const positionals = parsed.positionals[0] === "lock" ? parsed.positionals : [...parsed.positionals, ...afterDashes];
  const [verb, ...rest] = positionals;
  const common = {
    endpoints: (values.endpoints ?? (env.KV_ENDPOINTS || DEFAULT_ENDPOINT))
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    token: values.token ?? (env.KV_TOKEN || undefined),
    json: values.json === true,
    timeoutMs: values.timeout === undefined ? DEFAULT_TIMEOUT_MS : parseDuration("--timeout", values.timeout),
  };
  if (values.help === true || verb === "help") return { ...common, command: { verb: "help" } };
  if (verb === undefined) throw new UsageError("no command given");
  const allowed = OPTIONS_OF[verb];
  if (allowed === undefined) throw new UsageError(`unknown command ${JSON.stringify(verb)}`);
  for (const name of Object.keys(values)) if (!allowed.includes(name)) throw new UsageError(`${verb} takes no --${name}`);
  const operands = (names: string[]): string[] => {
    if (rest.length !== names.length) throw new UsageError(`${verb} takes ${names.map((n) => `<${n}>`).join(" ")}`);
    return rest as string[];
  };
  switch (verb) {
    case "get": {
      const [key] = operands(["key"]) as [string];
      return { ...common, command: { verb, key } };
    }
    case "put": {
      const [key, value] = operands(["key", "value"]) as [string, string];
      const version = values.version === undefined ? undefined : integer("--version", values.version, 0);
      return { ...common, command: { verb, key, value, version } };
    }
    case "del": {
      const [key] = operands(["key"]) as [string];
      const version = values.version === undefined ? undefined : integer("--version", values.version, 0);
      return { ...common, command: { verb, key, version } };
    }
    case "watch": {
      const [key] = operands(["key"]) as [string];
      const count = values.count === undefined ? Number.POSITIVE_INFINITY : integer("--count", values.count, 1);
      return { ...common, command: { verb, key, count } };
    }
    default: {
      const [key] = operands(["key"]) as [string];
      const command = afterDashes;
      if (command.length === 0) throw new UsageError("lock needs a command after --, e.g. kv lock jobs/nightly -- ./nightly.sh");
      const ttlMs = values.ttl === undefined ? DEFAULT_TTL_MS : parseDuration("--ttl", values.ttl);
      return { ...common, command: { verb: "lock", key, ttlMs, command: command as [string, ...string[]] } };
    }
  }
}

function parse(args: readonly string[]) {
  return parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      endpoints: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean" },
      version: { type: "string" },
      timeout: { type: "string" },
      ttl: { type: "string" },
      count: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
}

/** `15s` → 15 000. Units ms, s, m, h; a bare number is seconds. */
function parseDuration(name: string, text: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (match === null) throw new UsageError(`${name} must be a duration like 500ms, 15s or 2m, got ${JSON.stringify(text)}`);
  const ms = Number(match[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(match[2] ?? "s") as "ms"];
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new UsageError(`${name} must be more than 0, got ${JSON.stringify(text)}`);
  return ms;
}

function integer(name: string, text: string, min: number): number {
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${name} must be an integer ≥ ${min}, got ${JSON.stringify(text)}`);
  return n;
}
