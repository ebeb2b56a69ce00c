// The keyed workloads: the keys are split among the workers (worker w owns keys w, w + N, …),
// each worker knows its keys' versions, so every put names the exact current version and is a
// successful conditional put on every system — no ErrVersion retries muddy the figures.
import type { VersionedClient } from "./clients";
import type { Operation } from "./load";
import { runLoad } from "./load";

/** Every value is 100 bytes (S8 counts memory per key against them). */
export const VALUE = "v".repeat(100);

/** The keys `prefix0` … `prefix{keys-1}`, worker `w` owning `w`, `w + workers`, …, with their versions. */
export class KeySpace {
  readonly #versions: number[];
  readonly #cursors: number[];
  readonly #workers: number;

  constructor(
    readonly prefix: string,
    readonly keys: number,
    workers: number,
  ) {
    if (keys < workers) throw new Error(`${keys} keys cannot be split among ${workers} workers`);
    this.#versions = Array.from({ length: keys }, () => 0);
    this.#cursors = Array.from({ length: workers }, () => 0);
    this.#workers = workers;
  }

  /** The index of worker `worker`'s next key, round-robin over the keys it owns. */
  next(worker: number): number {
    const owned = Math.ceil((this.keys - worker) / this.#workers);
    const n = this.#cursors[worker] ?? 0;
    this.#cursors[worker] = (n + 1) % owned;
    return worker + n * this.#workers;
  }

  key(index: number): string {
    return `${this.prefix}${index}`;
  }

  version(index: number): number {
    return this.#versions[index] ?? 0;
  }

  bump(index: number): void {
    this.#versions[index] = this.version(index) + 1;
  }
}

/** Each call: the worker's next key, put at its current version. */
export function conditionalPuts(client: VersionedClient, space: KeySpace): Operation {
  return async (worker) => {
    const i = space.next(worker);
    await client.put(space.key(i), VALUE, space.version(i));
    space.bump(i);
    return undefined;
  };
}

/** Each call: the worker's next key, read and checked at its known version. */
export function reads(client: VersionedClient, space: KeySpace): Operation {
  return async (worker) => {
    const i = space.next(worker);
    await client.get(space.key(i), space.version(i));
    return undefined;
  };
}

/** Creates every key of `space` (version 1) before a read workload. */
export async function populate(client: VersionedClient, space: KeySpace, workers: number): Promise<void> {
  const perWorker = Math.ceil(space.keys / workers);
  await runLoad({ workers, op: conditionalPuts(client, space), serverPids: [], count: perWorker });
}
