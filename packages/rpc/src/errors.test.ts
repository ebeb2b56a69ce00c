import { describe, expect, it } from "vitest";
import { AbortError, hasCode, InvalidArgumentError, KvError, NetworkError, UnavailableError } from "./errors";

describe("errors", () => {
  it("names each error after its class and carries a code", () => {
    const closed = new KvError("ERR_KV_CLOSED", "closed");
    expect(closed).toMatchObject({ name: "KvError", code: "ERR_KV_CLOSED", message: "closed" });
    const cause = new Error("ECONNRESET");
    expect(new NetworkError("no reply", { cause })).toMatchObject({ name: "NetworkError", code: "ERR_KV_NO_REPLY", cause });
    const bad = new InvalidArgumentError("version must be ≥ 0");
    expect(bad).toBeInstanceOf(TypeError);
    expect(bad).toMatchObject({ name: "InvalidArgumentError", code: "ERR_INVALID_ARG_VALUE" });
    expect(new UnavailableError("busy", 250)).toMatchObject({ name: "UnavailableError", code: "ERR_KV_UNAVAILABLE", retryAfterMs: 250 });
    expect(new AbortError(undefined, { cause: "stop" })).toMatchObject({ name: "AbortError", code: "ABORT_ERR", cause: "stop" });
  });

  it("hasCode matches by code, whatever the class, and rejects non-errors", () => {
    expect(hasCode(Object.assign(new Error("x"), { code: "ERR_KV_CLOSED" }), "ERR_KV_CLOSED")).toBe(true);
    expect(hasCode(new KvError("ERR_KV_CLOSED", "x"), "ERR_KV_TOO_LARGE")).toBe(false);
    expect(hasCode({ code: "ERR_KV_CLOSED" }, "ERR_KV_CLOSED")).toBe(false);
  });
});
