/** What a scenario opened, closed in reverse order when it ends, whatever happened. */
export class Resources {
  readonly #closers: (() => Promise<void> | void)[] = [];

  /** Registers `thing` to be closed by `close`; returns it. */
  add<T>(thing: T, close: (thing: T) => Promise<void> | void): T {
    this.#closers.push(() => close(thing));
    return thing;
  }

  /** Closes everything, last opened first; rejects with the first failure once all were tried. */
  async close(): Promise<void> {
    let failure: unknown;
    for (const close of this.#closers.splice(0).reverse()) {
      try {
        await close();
      } catch (err) {
        failure ??= err;
      }
    }
    if (failure !== undefined) throw failure;
  }
}

/** Runs `body` with fresh {@link Resources} and closes them after it; a failure of `body` wins over one of closing. */
export async function withResources<T>(body: (resources: Resources) => Promise<T>): Promise<T> {
  const resources = new Resources();
  let result: T;
  try {
    result = await body(resources);
  } catch (err) {
    await resources.close().catch(() => undefined);
    throw err;
  }
  await resources.close();
  return result;
}
