/**
 * Time as the clerk and the lock see it: a monotonic `now` in milliseconds and a `sleep` that
 * rejects with the signal's reason when aborted. Tests pass a simulated one (testkit's
 * `SimNetwork`) to run in virtual time.
 */
export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}
