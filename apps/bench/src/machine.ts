import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism, release } from "node:os";

/** The machine and the versions a run measured, as BENCHMARKS.md states them. */
export interface Machine {
  readonly nproc: number;
  readonly cpuModel: string;
  /** `free -h`, as printed. */
  readonly memory: string;
  readonly kernel: string;
  readonly node: string;
  readonly etcd: string;
  readonly redis: string;
}

function run(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: "utf8" }).trimEnd(); // free's header starts with spaces
}

export function describeMachine(): Machine {
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  return {
    nproc: availableParallelism(),
    cpuModel,
    memory: run("free", ["-h"]),
    kernel: release(),
    node: process.version,
    etcd: /etcd Version: (\S+)/.exec(run("etcd", ["--version"]))?.[1] ?? "unknown",
    redis: /v=(\S+)/.exec(run("redis-server", ["--version"]))?.[1] ?? "unknown",
  };
}
