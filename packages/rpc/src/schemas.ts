import { type Static, Type } from "@sinclair/typebox";
import { MAX_PUT_ID_LENGTH, MAX_VERSION } from "./err";

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
  },
  closed,
);
export type PutBody = Static<typeof PutBody>;

/** The `:key` path parameter: one percent-encoded path segment. */
export const KeyParams = Type.Object({ key: Type.String({ description: "the key, percent-encoded" }) }, closed);

/** `GET /v1/kv/:key` takes no query parameters yet. */
export const GetQuery = Type.Object({}, closed);

export const GetOkReply = Type.Object({ err: Type.Literal("OK"), value: Type.String(), version: version("the key's version") }, closed);
export const PutOkReply = Type.Object({ err: Type.Literal("OK"), version: version("the key's new version") }, closed);
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
