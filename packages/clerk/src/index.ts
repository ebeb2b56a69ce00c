export { Clerk, createClerk, type ClerkOptions, type RetryOptions, type CallOptions, type GetOptions } from "./clerk";
export { HttpTransport, type HttpTransportOptions } from "./http-transport";
export { systemClock, backoffMs } from "./backoff";
// So that @kv/clerk alone is enough for a user.
export {
  Err,
  type GetResult,
  type PutResult,
  type DeleteResult,
  type Transport,
  type Clock,
  KvError,
  NetworkError,
  UnavailableError,
  AbortError,
  InvalidArgumentError,
  hasCode,
} from "@kv/rpc";
