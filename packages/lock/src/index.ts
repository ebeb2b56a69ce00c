export { Lock, createLock, LockNotHeldError, UNLOCKED, type Hold, type LockOptions } from "./lock";
export { LeaseLostError } from "./lease";
