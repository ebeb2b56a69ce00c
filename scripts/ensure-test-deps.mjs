// The test suite runs a real etcd (Debian's etcd-server, 3.4) and traces the server with strace;
// with --bench, the benchmarks (`pnpm bench`) run etcd and Redis (Debian's redis-server).
// Installs what is missing with apt-get when this runs as root; otherwise says how.
import { execFileSync } from "node:child_process";

const isBench = process.argv.includes("--bench");
// command → the Debian package that provides it
const needed = isBench ? { etcd: "etcd-server", "redis-server": "redis-server" } : { etcd: "etcd-server", strace: "strace" };
const what = isBench ? "the benchmarks" : "the tests";

const has = (command) => {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

const missing = Object.keys(needed).filter((command) => !has(command));
if (missing.length > 0) {
  const packages = missing.map((command) => needed[command]);
  if (process.getuid?.() === 0 && has("apt-get")) {
    console.log(`installing ${missing.join(" and ")} from Debian's packages (${packages.join(", ")})…`);
    execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
    execFileSync("apt-get", ["install", "-y", "-qq", ...packages], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  } else {
    console.error(`${what} need ${missing.join(" and ")}: install them first, e.g. sudo apt-get install ${packages.join(" ")}`);
    process.exit(1);
  }
}
