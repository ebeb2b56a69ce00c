import { describe, expect, it } from "vitest";
import { checkKey, checkPutId, checkValue, checkVersion, checkWait } from "./arguments";

const invalid = (message: string) => expect.objectContaining({ name: "InvalidArgumentError", code: "ERR_INVALID_ARG_VALUE", message });

describe("the argument rules shared by the server, its routes and the clerk", () => {
  it("take a key of well-formed Unicode, and refuse an empty one, a lone surrogate, a non-string and one over maxBytes", () => {
    for (const key of ["k", "a/b", "..", "🔑", "é".repeat(2048)]) expect(() => checkKey(key, 4096)).not.toThrow();
    expect(() => checkKey("")).toThrow(invalid("key must not be empty"));
    expect(() => checkKey("\ud800")).toThrow(invalid('key must be a non-empty string of well-formed Unicode, got "\\ud800"'));
    expect(() => checkKey(5)).toThrow(invalid("key must be a non-empty string of well-formed Unicode, got 5"));
    expect(() => checkKey("é".repeat(2049), 4096)).toThrow(invalid("key must be at most 4096 UTF-8 bytes, got 4098"));
  });

  it("take a value of well-formed Unicode, and say ERR_KV_TOO_LARGE for one over maxBytes", () => {
    expect(() => checkValue("", 10)).not.toThrow();
    expect(() => checkValue("\udc00")).toThrow(invalid("value must be a string of well-formed Unicode"));
    expect(() => checkValue(null)).toThrow(invalid("value must be a string of well-formed Unicode, got object"));
    expect(() => checkValue("ééé", 5)).toThrow(
      expect.objectContaining({ name: "KvError", code: "ERR_KV_TOO_LARGE", message: "value must be at most 5 UTF-8 bytes, got 6" }),
    );
    // Too large comes first: the limit says how much the server will read at all.
    expect(() => checkValue("\udc00".repeat(4), 5)).toThrow(expect.objectContaining({ code: "ERR_KV_TOO_LARGE" }));
  });

  it("take a version that is a safe integer ≥ 0", () => {
    for (const version of [0, 1, Number.MAX_SAFE_INTEGER]) expect(() => checkVersion(version)).not.toThrow();
    for (const version of [-1, 1.5, Number.MAX_SAFE_INTEGER + 1, Number.NaN]) {
      expect(() => checkVersion(version)).toThrow(invalid(`version must be a safe integer ≥ 0, got ${version}`));
    }
    expect(() => checkVersion("1", "waitVersion")).toThrow(invalid('waitVersion must be a safe integer ≥ 0, got "1"'));
  });

  it("take a put id of 1–64 characters, counted as code points", () => {
    for (const id of ["i", "i".repeat(64), "🔑".repeat(64)]) expect(() => checkPutId(id)).not.toThrow();
    for (const id of ["", "i".repeat(65), "🔑".repeat(65), "\ud800", 7])
      expect(() => checkPutId(id)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
  });

  it("take a wait as both halves, and within range", () => {
    expect(checkWait(0, 60_000)).toEqual({ version: 0, ms: 60_000 });
    expect(() => checkWait(1, undefined)).toThrow(invalid("waitVersion and waitMs go together"));
    expect(() => checkWait(undefined, 10)).toThrow(invalid("waitVersion and waitMs go together"));
    expect(() => checkWait(1, 60_001)).toThrow(invalid("waitMs must be at most 60000, got 60001"));
    expect(() => checkWait(2 ** 53, 10)).toThrow(invalid("waitVersion must be at most 9007199254740991, got 9007199254740992"));
    expect(() => checkWait(-1, 10)).toThrow(invalid("waitVersion must be a safe integer ≥ 0, got -1"));
    expect(() => checkWait(1, 1.5)).toThrow(invalid("waitMs must be an integer ≥ 0, got 1.5"));
  });

  it("takes a wait's decimal text from a query string, and names it as sent", () => {
    expect(checkWait("7", "250")).toEqual({ version: 7, ms: 250 });
    expect(() => checkWait("9999999999999999", "10")).toThrow(
      invalid("waitVersion must be at most 9007199254740991, got 9999999999999999"),
    );
    expect(() => checkWait("1", "060001")).toThrow(invalid("waitMs must be at most 60000, got 060001"));
    expect(() => checkWait("-1", "10")).toThrow(invalid('waitVersion must be a safe integer ≥ 0, got "-1"'));
  });
});
