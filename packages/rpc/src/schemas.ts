import { type Static, Type } from "@sinclair/typebox";
import { MAX_PUT_ID_LENGTH, MAX_VERSION, MAX_WAIT_MS } from "./err";

// Every object schema is closed: the protocol has no optional extras to ignore (contract §4).
const closed = { additionalProperties: false } as const;

const version = (description: string) => Type.Integer({ minimum: 0, maximum: MAX_VERSION, description });

/** `PUT /v1/kv/:key` body. `value` is also limited in UTF-8 bytes by the server's configuration. */
export const PutBody = Type.Object(
  {
    value: Type.String(),
    version: version("the key's current version; 0 creates the key"),
    id: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: MAX_PUT_ID_LENGTH,
        description: "fresh for each put, the same on its retries: lets the server recognise a retry",
      }),
    ),
    retry: Type.Optional(
      Type.Boolean({ description: "true on every try after the first: a refusal of it is recorded, so no earlier try applies later" }),
    ),
  },
  closed,
);
export type PutBody = Static<typeof PutBody>;

/** The `:key` path parameter: one percent-encoded path segment. */
export const KeyParams = Type.Object({ key: Type.String({ description: "the key, percent-encoded" }) }, closed);

// Query parameters arrive as text, and the protocol does not coerce: digits only, checked again as numbers.
const digits = (description: string) => Type.String({ pattern: "^(0|[1-9][0-9]{0,15})$", description });

/** `DELETE /v1/kv/:key` query: all optional. */
export const DeleteQuery = Type.Object(
  {
    version: Type.Optional(digits("delete only when the key is at this version")),
    id: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: MAX_PUT_ID_LENGTH,
        description: "fresh for each delete, the same on its retries: lets the server recognise a retry",
      }),
    ),
    retry: Type.Optional(
      Type.Union([Type.Literal("true"), Type.Literal("false")], {
        description: "true on every try after the first: a refusal of it is recorded, so no earlier try applies later",
      }),
    ),
  },
  closed,
);
export type DeleteQuery = Static<typeof DeleteQuery>;

/**
 * `GET /v1/kv/:key` query: both or neither of `waitVersion` and `waitMs` — a long-poll that is
 * answered once the key's version differs from `waitVersion` (0: once it exists), or after
 * `waitMs` (at most 60 000) with the current state.
 */
export const GetQuery = Type.Object(
  {
    waitVersion: Type.Optional(digits("answer once the key's version differs from this (0: once the key exists)")),
    waitMs: Type.Optional(digits(`answer after this many ms at the latest (0–${MAX_WAIT_MS})`)),
  },
  closed,
);
export type GetQuery = Static<typeof GetQuery>;

const revision = (description: string) => Type.Integer({ minimum: 0, maximum: MAX_VERSION, description });

export const GetOkReply = Type.Object(
  {
    err: Type.Literal("OK"),
    value: Type.String(),
    version: version("the key's version"),
    modRevision: revision("the store revision of the write that made this version"),
    createRevision: revision("the store revision of the write that created the key"),
  },
  closed,
);
export const PutOkReply = Type.Object(
  { err: Type.Literal("OK"), version: version("the key's new version"), revision: revision("the store revision this put made") },
  closed,
);
export const DeleteOkReply = Type.Object({ err: Type.Literal("OK"), revision: revision("the store revision this delete made") }, closed);
export const NoKeyReply = Type.Object({ err: Type.Literal("ErrNoKey") }, closed);
export const VersionReply = Type.Object({ err: Type.Literal("ErrVersion") }, closed);

/** Every refusal (4xx/5xx other than the expected outcomes): a code and what was wrong. */
export const ErrorReply = Type.Object(
  {
    err: Type.String({ description: "ErrBadRequest, ErrTooLarge, ErrUnauthorized, ErrUnavailable, …" }),
    message: Type.Optional(Type.String()),
  },
  closed,
);
export type ErrorReply = Static<typeof ErrorReply>;
