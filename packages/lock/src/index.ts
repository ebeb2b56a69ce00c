export { Lock, createLock, LockNotHeldError, LeaseLostError, UNLOCKED, type Hold, type LockOptions } from "./lock";
