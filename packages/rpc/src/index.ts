export { Err, type GetResult, type PutResult, type DeleteResult, MAX_VERSION, MAX_PUT_ID_LENGTH, MAX_WAIT_MS } from "./err";
export { KvError, type KvErrorCode, NetworkError, UnavailableError, AbortError, InvalidArgumentError, hasCode } from "./errors";
export type { Clock } from "./clock";
export {
  PutBody,
  KeyParams,
  GetQuery,
  DeleteOkReply,
  DeleteQuery,
  GetOkReply,
  PutOkReply,
  NoKeyReply,
  VersionReply,
  ErrorReply,
} from "./schemas";
export { KV_ROUTE, KV_PREFIX, kvPath, statusByErr, type ReplyErr } from "./http";
export type { Transport, PutRequest, DeleteRequest, TransportCallOptions, WaitOptions } from "./transport";
export { checkKey, checkValue, checkVersion, checkPutId, checkWait } from "./arguments";
