import { describe, expect, it } from "vitest";
import { backoffMs } from "./backoff";

describe("backoffMs", () => {
  it("draws from zero up to base × 2^attempt, capped at max (full jitter)", () => {
    expect(backoffMs(0, 10, 1000, () => 0.999)).toBeCloseTo(9.99);
    expect(backoffMs(3, 10, 1000, () => 0.5)).toBe(40);
    expect(backoffMs(20, 10, 1000, () => 0.5)).toBe(500);
    expect(backoffMs(5, 10, 1000, () => 0)).toBe(0);
  });
});
