export { Lock, createLock, LockNotHeldError, UNLOCKED, type Hold, type LockOptions } from "./lock";
