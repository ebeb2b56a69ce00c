import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:os";
import type { Clerk } from "@kv/clerk";
import { createLock, type Hold, type Lock, LockNotHeldError } from "@kv/lock";
import { UsageError } from "./args";

/** What `kv lock` needs from `kv`: where to report, and the signal that stops it. */
export interface LockContext {
  env: Record<string, string | undefined>;
  note: (text: string) => void;
  signal?: AbortSignal | undefined;
  /** How long a release may take before kv leaves the lock to its lease. */
  releaseTimeoutMs: number;
}

/** `kv lock`: the lease could not be renewed and the command was stopped. */
export const LEASE_LOST = 6;
/** The command could not be started. */
export const CANNOT_RUN = 127;

/** 128 + the signal's number, as a shell reports a process a signal ended. */
export function exitCodeOfSignal(name: unknown): number {
  return 128 + ((typeof name === "string" && constants.signals[name as NodeJS.Signals]) || constants.signals.SIGINT);
}

/**
 * Runs `command` while holding the lock on `key` with a lease of `ttlMs`, and resolves with
 * the command's exit code. The command runs in a process group of its own, so stopping it
 * stops what it started too: on a lost lease, SIGTERM, then SIGKILL 5 % of `ttlMs` later —
 * the lease gives up at 90 % of `ttlMs` and nobody takes over before 100 %.
 */
export async function runLocked(
  clerk: Clerk,
  key: string,
  ttlMs: number,
  command: readonly [string, ...string[]],
  context: LockContext,
): Promise<number> {
  let lock: Lock;
  try {
    lock = createLock(clerk, key, { ttlMs });
  } catch (err) {
    throw new UsageError(`--ttl: ${(err as Error).message}`);
  }
  let hold: Hold;
  try {
    hold = await lock.acquire(context.signal === undefined ? {} : { signal: context.signal });
  } catch (err) {
    if (!context.signal?.aborted) throw err;
    // Stopped while waiting: a put of ours may have landed all the same; give it back.
    await release(lock, key, context);
    return exitCodeOfSignal(context.signal.reason);
  }

  const [file, ...args] = command;
  const child = spawn(file, args, {
    stdio: "inherit",
    detached: true,
    env: { ...context.env, KV_LOCK_KEY: key, KV_LOCK_TOKEN: String(hold.token) },
  });
  const killGroup = (signal: NodeJS.Signals) => signalGroup(child, signal);
  const killOnExit = () => killGroup("SIGKILL"); // kv forced out (a second Ctrl-C): nothing runs on unlocked
  process.once("exit", killOnExit);
  let killTimer: NodeJS.Timeout | undefined;
  const stop = () => {
    killGroup("SIGTERM");
    killTimer ??= setTimeout(() => killGroup("SIGKILL"), Math.max(50, ttlMs * 0.05));
  };
  let isLost = false;
  const onLost = () => {
    if (!hasLeaseEnded(hold)) return; // released: the command is done already
    isLost = true;
    context.note(`lost the lock on ${key} (${describe(hold.signal.reason)}); stopping the command`);
    stop();
  };
  const exited = new Promise<number>((resolve) => {
    child.once("error", (err) => {
      context.note(`cannot run ${file}: ${err.message}`);
      resolve(CANNOT_RUN);
    });
    child.once("exit", (code, signal) => resolve(code ?? exitCodeOfSignal(signal)));
  });
  // Either may have fired before the listeners were added.
  hold.signal.addEventListener("abort", onLost, { once: true });
  context.signal?.addEventListener("abort", stop, { once: true });
  if (hold.signal.aborted) onLost();
  if (context.signal?.aborted) stop();

  const code = await exited;
  clearTimeout(killTimer);
  process.removeListener("exit", killOnExit);
  hold.signal.removeEventListener("abort", onLost);
  context.signal?.removeEventListener("abort", stop);
  // After a lost lease a late renewal of ours may still have landed: give that back too, but
  // wait no longer than the lease would take to pass it on anyway.
  await release(lock, key, isLost ? { ...context, releaseTimeoutMs: Math.min(context.releaseTimeoutMs, ttlMs) } : context);
  return isLost ? LEASE_LOST : code;
}

/** Releases, within the time allowed; past it, or on failure, the lease passes the lock on. */
async function release(lock: Lock, key: string, context: LockContext): Promise<void> {
  const releasing = lock.release().then(
    () => undefined,
    (err: unknown) => (err instanceof LockNotHeldError ? undefined : err),
  );
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<"timed out">((resolve) => (timer = setTimeout(resolve, context.releaseTimeoutMs, "timed out")));
  const outcome = await Promise.race([releasing, timedOut]);
  clearTimeout(timer);
  if (outcome !== undefined)
    context.note(`could not release the lock on ${key} (${describe(outcome)}); it passes on once its lease runs out`);
}

function hasLeaseEnded(hold: Hold): boolean {
  const reason = hold.signal.reason as { code?: unknown } | undefined;
  return reason?.code === "ERR_LOCK_LEASE_LOST";
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is gone already
  }
}

function describe(reason: unknown): string {
  return reason instanceof Error ? reason.message : String(reason);
}
