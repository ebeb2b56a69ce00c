import { describe, expect, it } from "vitest";
import { kvPath, statusByErr } from "./http";

describe("kvPath", () => {
  it("puts the whole key in one percent-encoded path segment", () => {
    expect(kvPath("a/b")).toBe("/v1/kv/a%2Fb");
    expect(kvPath("a b?c#d%")).toBe("/v1/kv/a%20b%3Fc%23d%25");
    expect(kvPath("€")).toBe("/v1/kv/%E2%82%AC");
  });

  it("leaves the keys . and .. as they are, to be sent as a raw path", () => {
    expect(kvPath(".")).toBe("/v1/kv/.");
    expect(kvPath("..")).toBe("/v1/kv/..");
  });

  it("throws URIError for a key with a lone surrogate", () => {
    expect(() => kvPath("\ud800")).toThrow(URIError);
  });
});

describe("statusByErr", () => {
  it("pairs the contract's outcomes with their HTTP statuses", () => {
    expect(statusByErr).toMatchObject({
      OK: 200,
      ErrNoKey: 404,
      ErrVersion: 409,
      ErrBadRequest: 400,
      ErrUnauthorized: 401,
      ErrTooLarge: 413,
      ErrUnavailable: 503,
      ErrMaybe: 504,
    });
  });
});
