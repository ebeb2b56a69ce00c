import type { SystemFigures } from "./load";

/** A target of the item 4: informational, never an assertion. */
export interface Goal {
  readonly min?: number;
  readonly max?: number;
}

/** A figure derived from a scenario's systems, and the goal it is held to, if any. */
export interface Ratio {
  readonly label: string;
  readonly value: number;
  readonly goal?: Goal;
}

/** A figure that is not a system's throughput (S8's memory). */
export interface Figure {
  readonly label: string;
  readonly value: number;
  readonly unit: string;
}

export interface ScenarioResult {
  readonly id: string;
  readonly title: string;
  /** What each row's ops/s and latency are, where not conditional puts (e.g. "handoffs/s, acquire wait"). */
  readonly measures?: string;
  readonly systems: readonly SystemFigures[];
  readonly figures: readonly Figure[];
  readonly ratios: readonly Ratio[];
  readonly seconds: number;
}

/** Whether `value` meets `goal` (a missing bound is no constraint). */
export function isMet(value: number, goal: Goal): boolean {
  return (goal.min === undefined || value >= goal.min) && (goal.max === undefined || value <= goal.max);
}

/** `≥ 2`, `≤ 250`. */
export function describeGoal(goal: Goal): string {
  return [goal.min !== undefined && `≥ ${goal.min}`, goal.max !== undefined && `≤ ${goal.max}`].filter(Boolean).join(" and ");
}

/** `a.opsPerSec ÷ b.opsPerSec` of the systems named `a` and `b`. */
export function throughputRatio(systems: readonly SystemFigures[], a: string, b: string): number {
  return figuresOf(systems, a).opsPerSec / figuresOf(systems, b).opsPerSec;
}

export function figuresOf(systems: readonly SystemFigures[], name: string): SystemFigures {
  const found = systems.find((s) => s.name === name);
  if (found === undefined) throw new Error(`no system named ${name}`);
  return found;
}
