import { InvalidArgumentError } from "@kv/rpc";
import { type Event, formatEvent } from "./history";

export type CheckResult =
  | { result: "ok" }
  | { result: "illegal"; key: string; explanation: string }
  | { result: "unknown" };

// Long enough for any history the tests make (they check in milliseconds), short enough that a
// pathological one fails a test instead of hanging it.
const DEFAULT_TIMEOUT_MS = 10_000;
// How many search steps between two looks at the clock.
const CLOCK_CHECK_INTERVAL = 4096;

/**
 * Decides whether a history of gets and puts on versioned keys (contract §2) is linearizable:
 * Wing & Gong's search with Lowe's memoisation (as in Knossos and porcupine), run per key —
 * linearizability is local, so a history is linearizable exactly when each key's is.
 *
 * Answers `ok`, `illegal` (with the key and the longest consistent prefix it found), or
 * `unknown` when `timeoutMs` (default 10 s, shared by all keys) runs out; never a wrong `ok`.
 * Throws `InvalidArgumentError` (a `TypeError`) for a malformed event: return before call, an
 * output without a return. Ops of different keys at equal times count as concurrent: give
 * distinct times (recordHistory does) where that matters.
 */
export function checkLinearizable(history: readonly Event[], opts: { timeoutMs?: number } = {}): CheckResult {
  const deadline = performance.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const byKey = new Map<string, Event[]>();
  for (const e of history) {
    validate(e);
    // A get with no reply told nobody anything and changed nothing.
    if (e.op.kind === "get" && e.output === undefined) continue;
    const events = byKey.get(e.op.key);
    if (events === undefined) byKey.set(e.op.key, [e]);
    else events.push(e);
  }
  let isUnknown = false;
  for (const [key, events] of byKey) {
    const r = checkKey(key, events, deadline);
    if (r.result === "illegal") return r;
    if (r.result === "unknown") isUnknown = true;
  }
  return isUnknown ? { result: "unknown" } : { result: "ok" };
}

function validate(e: Event): void {
  if (!Number.isFinite(e.call)) throw new InvalidArgumentError(`event call time must be a finite number: ${JSON.stringify(e)}`);
  if (e.return === undefined) {
    if (e.output !== undefined) throw new InvalidArgumentError(`event has an output but no return time: ${JSON.stringify(e)}`);
  } else if (!(e.return >= e.call) || e.output === undefined) {
    throw new InvalidArgumentError(`event must return after its call, with an output: ${JSON.stringify(e)}`);
  }
}

/** How an op fits the state: does not fit, fits without changing it, or fits by writing. */
const enum Fit {
  No,
  NoEffect,
  Write,
}

interface KeyOp {
  readonly event: Event;
  readonly bit: number;
  /** Interned value of a put, so states compare as two numbers. */
  readonly valueId: number;
  readonly isUnknownPut: boolean;
  /** The same client's answered op on this key just before this one: it must come first. */
  after: KeyOp | null;
  isDone: boolean;
}

/** A node of Lowe's doubly linked list of call and return entries. */
interface Entry {
  op: KeyOp;
  isCall: boolean;
  match: Entry | null; // a call's return entry
  prev: Entry | null;
  next: Entry | null;
}

interface Frame {
  entry: Entry;
  version: number;
  valueId: number;
  isForced: boolean;
}

function checkKey(key: string, events: Event[], deadline: number): CheckResult {
  const values = new Map<string, number>();
  const valueNames: string[] = [];
  const intern = (v: string) => {
    let id = values.get(v);
    if (id === undefined) {
      values.set(v, (id = valueNames.length));
      valueNames.push(v);
    }
    return id;
  };
  const ops: KeyOp[] = events.map((event, bit) => ({
    event,
    bit,
    valueId: event.op.kind === "put" ? intern(event.op.value) : event.output?.err === "OK" && "value" in event.output ? intern(event.output.value) : -1,
    isUnknownPut: event.op.kind === "put" && (event.output === undefined || event.output.err === "ErrMaybe"),
    after: null,
    isDone: false,
  }));
  orderByClient(ops);

  // Calls before returns at equal times: such ops count as concurrent, which can only allow more.
  const points = ops.flatMap((op) => [
    { time: op.event.call, isCall: true, op },
    { time: op.event.return ?? Number.POSITIVE_INFINITY, isCall: false, op },
  ]);
  points.sort((a, b) => a.time - b.time || Number(b.isCall) - Number(a.isCall));
  const head: Entry = { op: ops[0] as KeyOp, isCall: false, match: null, prev: null, next: null };
  const callOf = new Map<KeyOp, Entry>();
  let tail = head;
  for (const p of points) {
    const entry: Entry = { op: p.op, isCall: p.isCall, match: null, prev: tail, next: null };
    tail.next = entry;
    tail = entry;
    if (p.isCall) callOf.set(p.op, entry);
    else (callOf.get(p.op) as Entry).match = entry;
  }

  const lift = (e: Entry) => {
    e.op.isDone = true;
    (e.prev as Entry).next = e.next;
    if (e.next) e.next.prev = e.prev;
    const m = e.match as Entry;
    (m.prev as Entry).next = m.next;
    if (m.next) m.next.prev = m.prev;
  };
  const unlift = (e: Entry) => {
    const m = e.match as Entry;
    (m.prev as Entry).next = m;
    if (m.next) m.next.prev = m;
    (e.prev as Entry).next = e;
    if (e.next) e.next.prev = e;
    e.op.isDone = false;
  };

  const words = new Uint16Array(Math.ceil(ops.length / 16));
  const toggle = (bit: number) => {
    words[bit >> 4] = (words[bit >> 4] as number) ^ (1 << (bit & 15));
  };
  const seen = new Set<string>();
  /** Marks the configuration "these ops done, this state" visited; false if it already was. */
  const visit = (version: number, valueId: number): boolean => {
    const k = `${String.fromCharCode(...words)}|${version},${valueId}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  };

  // The state: version 0 is "absent".
  let version = 0;
  let valueId = -1;
  let done = 0;
  const stack: Frame[] = [];
  let resumeAt: Entry | null = null;
  let steps = 0;
  let deepest: Deepest = { done: -1, version: 0, value: undefined, placed: [], candidates: [], deadline: 0 };

  search: while (true) {
    if (++steps % CLOCK_CHECK_INTERVAL === 0 && performance.now() > deadline) return { result: "unknown" };
    if (head.next === null) return { result: "ok" };

    let isDoomed = false;
    if (resumeAt === null) {
      if (done > deepest.done) deepest = snapshot(head, stack, done, version, valueNames[valueId]);
      // An op that fits now without effect, and could not write later, may be taken first:
      // any order that takes it later works as well with it here. No other choice is needed.
      for (let e: Entry | null = head.next; e !== null && e.isCall; e = e.next) {
        if (!isReady(e.op) || !isForced(e.op, version, valueId)) continue;
        toggle(e.op.bit);
        if (visit(version, valueId)) {
          lift(e);
          stack.push({ entry: e, version, valueId, isForced: true });
          done++;
          continue search;
        }
        toggle(e.op.bit);
        isDoomed = true; // explored before, and it failed
        break;
      }
    }

    // Branch: try each op that may come next, in list order from where the last try left off.
    for (let e = isDoomed ? null : (resumeAt ?? head.next); e !== null && e.isCall; e = e.next) {
      const fit = isReady(e.op) ? fitOf(e.op, version, valueId) : Fit.No;
      if (fit === Fit.No) continue;
      const nextVersion = fit === Fit.Write ? version + 1 : version;
      const nextValueId = fit === Fit.Write ? e.op.valueId : valueId;
      toggle(e.op.bit);
      if (!visit(nextVersion, nextValueId)) {
        toggle(e.op.bit);
        continue;
      }
      lift(e);
      stack.push({ entry: e, version, valueId, isForced: false });
      version = nextVersion;
      valueId = nextValueId;
      done++;
      resumeAt = null;
      continue search;
    }

    // Dead end: undo to the last branch and try its next sibling.
    while (true) {
      const frame = stack.pop();
      if (frame === undefined) return { result: "illegal", key, explanation: explain(key, events, deepest) };
      unlift(frame.entry);
      toggle(frame.entry.op.bit);
      version = frame.version;
      valueId = frame.valueId;
      done--;
      if (!frame.isForced) {
        resumeAt = frame.entry.next;
        continue search;
      }
    }
  }
}

/**
 * A client's ops never overlap (contract §6): each comes after that client's previous answered
 * op, even when the times touch — a client calls its next op the instant the last one returns.
 * An op with no reply constrains nothing after it: it may land late.
 */
function orderByClient(ops: KeyOp[]): void {
  const byClient = new Map<number, KeyOp[]>();
  for (const op of ops) {
    const list = byClient.get(op.event.client);
    if (list === undefined) byClient.set(op.event.client, [op]);
    else list.push(op);
  }
  for (const list of byClient.values()) {
    list.sort((a, b) => a.event.call - b.event.call || a.bit - b.bit);
    let lastAnswered: KeyOp | null = null;
    for (const op of list) {
      op.after = lastAnswered;
      if (op.event.return !== undefined) lastAnswered = op;
    }
  }
}

const isReady = (op: KeyOp): boolean => op.after === null || op.after.isDone;

/** How `op` fits the state (version, valueId) of its key, by contract §2. */
function fitOf(op: KeyOp, version: number, valueId: number): Fit {
  const { op: o, output } = op.event;
  if (o.kind === "get") {
    if (output?.err === "ErrNoKey") return version === 0 ? Fit.NoEffect : Fit.No;
    return output?.err === "OK" && "value" in output && output.version === version && op.valueId === valueId ? Fit.NoEffect : Fit.No;
  }
  const matches = version === o.version; // version 0 is "absent", which a put at 0 matches
  if (op.isUnknownPut) return matches ? Fit.Write : Fit.NoEffect;
  switch (output?.err) {
    case "OK":
      return matches && "version" in output && output.version === o.version + 1 ? Fit.Write : Fit.No;
    case "ErrVersion":
      return version > 0 && !matches ? Fit.NoEffect : Fit.No;
    case "ErrNoKey":
      return version === 0 && o.version > 0 ? Fit.NoEffect : Fit.No;
    default:
      return Fit.No;
  }
}

/**
 * An op to take at once: one with a known result that fits now without effect, or a put of
 * unknown result whose version is already passed (versions only grow: it can never write).
 */
function isForced(op: KeyOp, version: number, valueId: number): boolean {
  if (op.isUnknownPut) return op.event.op.kind === "put" && version > op.event.op.version;
  return fitOf(op, version, valueId) === Fit.NoEffect;
}

/** Where the search got furthest: what it had placed, and what could not come next. */
interface Deepest {
  done: number;
  version: number;
  value: string | undefined;
  placed: Event[];
  candidates: Event[];
  /** The earliest return still ahead: one of the candidates had to take effect by then. */
  deadline: number;
}

function snapshot(head: Entry, stack: Frame[], done: number, version: number, value: string | undefined): Deepest {
  const candidates: Event[] = [];
  let e = head.next;
  for (; e !== null && e.isCall; e = e.next) candidates.push(e.op.event);
  const deadline = e === null ? Number.POSITIVE_INFINITY : (e.op.event.return ?? Number.POSITIVE_INFINITY);
  return { done, version, value, placed: stack.slice(-3).map((f) => f.entry.op.event), candidates, deadline };
}

const MAX_LISTED = 6;

function explain(key: string, events: readonly Event[], d: Deepest): string {
  const list = (es: readonly Event[]) =>
    es.slice(0, MAX_LISTED).map((e) => `  ${formatEvent(e)}`).join("\n") + (es.length > MAX_LISTED ? `\n  (+${es.length - MAX_LISTED} more)` : "");
  const state = d.version === 0 ? "absent" : `at version ${d.version}, value ${JSON.stringify(d.value)}`;
  const from = Math.min(...d.candidates.map((e) => e.call));
  const around = events.filter((e) => e.call <= d.deadline && (e.return ?? Number.POSITIVE_INFINITY) >= from).sort((a, b) => a.call - b.call);
  return [
    `no order of the ${events.length} operations on key ${JSON.stringify(key)} fits their results.`,
    d.done === 0
      ? "Not even a first operation fits:"
      : `The longest consistent order places ${d.done}, ending with:\n${list(d.placed)}\nafter which the key is ${state}, and none of these may come next:`,
    list(d.candidates),
    `Operations around that point (calls up to ${d.deadline.toFixed(1)}):`,
    list(around),
  ].join("\n");
}
