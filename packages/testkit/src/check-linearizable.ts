import { InvalidArgumentError } from "@kv/rpc";
import { type Event, formatEvent } from "./history";

/**
 * The verdict of {@link checkLinearizable}: `ok` (some order fits every result), `illegal` (none
 * fits the ops on `key`; `explanation` shows where the best order got stuck), or `unknown` (out of
 * time before either was proved).
 */
export type CheckResult = { result: "ok" } | { result: "illegal"; key: string; explanation: string } | { result: "unknown" };

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
 * Ops of different clients at equal times count as concurrent.
 *
 * Throws `InvalidArgumentError` (a `TypeError`) for a malformed event (return before call, an
 * output without a return) and for a client whose ops overlap: an answered op must return
 * strictly before the same client's next call (contract §6). Per-key checking sees a client's
 * order only through the times, so touching times would lose it; record with a clock that moves
 * between a return and the next call (recordHistory does). An op with no reply constrains nothing.
 */
export function checkLinearizable(history: readonly Event[], opts: { timeoutMs?: number } = {}): CheckResult {
  const deadline = performance.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const byKey = new Map<string, Event[]>();
  for (const e of history) validate(e);
  checkClientOrder(history);
  for (const e of history) {
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

/**
 * One client's ops never overlap (contract §6): each answered op returns strictly before the
 * client's next call. Checked here because the search, split by key, sees a client's order only
 * through the times: a return equal to the next call would read as concurrent and hide it.
 */
function checkClientOrder(history: readonly Event[]): void {
  const byClient = new Map<number, Event[]>();
  for (const e of history) {
    const list = byClient.get(e.client);
    if (list === undefined) byClient.set(e.client, [e]);
    else list.push(e);
  }
  for (const [client, list] of byClient) {
    list.sort((a, b) => a.call - b.call);
    for (let i = 1; i < list.length; i++) {
      const prev = list[i - 1] as Event;
      const next = list[i] as Event;
      // An op with no reply may land any time after its call: it orders nothing after it.
      if (prev.return === undefined || prev.return < next.call) continue;
      throw new InvalidArgumentError(
        `client ${client}'s ops overlap: one returned at ${prev.return}, its next was called at ${next.call}; ` +
          `an op must return strictly before its client's next call (record with a clock that moves between them):\n` +
          `  ${formatEvent(prev)}\n  ${formatEvent(next)}`,
      );
    }
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
    valueId:
      event.op.kind === "put"
        ? intern(event.op.value)
        : event.output?.err === "OK" && "value" in event.output
          ? intern(event.output.value)
          : -1,
    isUnknownPut: event.op.kind === "put" && (event.output === undefined || event.output.err === "ErrMaybe"),
  }));

  // Calls before returns at equal times: such ops (of different clients, checkClientOrder made
  // sure) count as concurrent, which can only allow more. A client's earlier answered op returns
  // before its next call, so the list keeps the later one out of reach until the earlier is placed.
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
        if (!isForced(e.op, version, valueId)) continue;
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
      const fit = fitOf(e.op, version, valueId);
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
    es
      .slice(0, MAX_LISTED)
      .map((e) => `  ${formatEvent(e)}`)
      .join("\n") + (es.length > MAX_LISTED ? `\n  (+${es.length - MAX_LISTED} more)` : "");
  const state = d.version === 0 ? "absent" : `at version ${d.version}, value ${JSON.stringify(d.value)}`;
  const from = Math.min(...d.candidates.map((e) => e.call));
  const around = events
    .filter((e) => e.call <= d.deadline && (e.return ?? Number.POSITIVE_INFINITY) >= from)
    .sort((a, b) => a.call - b.call);
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
