/**
 * Who waits on which key, in this process: a store that sees every write to itself (memory,
 * LMDB) wakes its long-poll readers with it. Costs nothing for keys nobody waits on.
 */
export class KeyWatchers {
  readonly #byKey = new Map<string, Set<() => void>>();

  /** Calls `onChange` at each `notify(key)` until the returned function is called. */
  add(key: string, onChange: () => void): () => void {
    let watchers = this.#byKey.get(key);
    if (watchers === undefined) this.#byKey.set(key, (watchers = new Set()));
    watchers.add(onChange);
    return () => {
      watchers.delete(onChange);
      if (watchers.size === 0 && this.#byKey.get(key) === watchers) this.#byKey.delete(key);
    };
  }

  /** Whether anyone waits on any key. */
  isEmpty(): boolean {
    return this.#byKey.size === 0;
  }

  /** Wakes everyone, whatever key they wait on: after a gap in what the store could see. */
  notifyAll(): void {
    for (const watchers of [...this.#byKey.values()]) for (const onChange of [...watchers]) onChange();
  }

  /** Wakes everyone waiting on `key`. */
  notify(key: string): void {
    const watchers = this.#byKey.get(key);
    if (watchers !== undefined) for (const onChange of [...watchers]) onChange();
  }
}
