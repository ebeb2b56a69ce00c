export { runCli, ExitCode, type CliContext } from "./cli";
