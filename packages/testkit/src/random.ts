/** A seeded generator of floats in [0, 1) (sfc32): the same seed, the same sequence. */
export function createRandom(seed: number): () => number {
  let a = 0x9e3779b9;
  let b = 0x243f6a88;
  let c = 0xb7e15162;
  let d = seed >>> 0;
  const next = () => {
    a >>>= 0;
    b >>>= 0;
    c >>>= 0;
    d >>>= 0;
    let t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    t = (t + d) | 0;
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 15; i++) next(); // mix the seed in before the first draw
  return next;
}

/** A seed for a test run: from `KV_TEST_SEED` when replaying a failure, else a fresh one. */
export function testSeed(): number {
  const fromEnv = process.env.KV_TEST_SEED;
  if (fromEnv === undefined) return Math.floor(Math.random() * 2 ** 31);
  const seed = Number(fromEnv);
  if (!Number.isSafeInteger(seed)) throw new TypeError(`KV_TEST_SEED must be an integer, got ${JSON.stringify(fromEnv)}`);
  return seed;
}
