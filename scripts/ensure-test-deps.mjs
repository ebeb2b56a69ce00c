// The test suite runs a real etcd (Debian's etcd-server, 3.4) and traces the server with strace.
// Installs both with apt-get when they are missing and this runs as root; otherwise says how.
import { execFileSync } from "node:child_process";

const has = (command) => {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

const missing = ["etcd", "strace"].filter((command) => !has(command));
if (missing.length > 0) {
  if (process.getuid?.() === 0 && has("apt-get")) {
    console.log(`installing ${missing.join(" and ")} from Debian's packages (etcd-server, strace)…`);
    execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
    execFileSync("apt-get", ["install", "-y", "-qq", "etcd-server", "strace"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  } else {
    console.error(`the tests need ${missing.join(" and ")}: install them first, e.g. sudo apt-get install etcd-server strace`);
    process.exit(1);
  }
}
