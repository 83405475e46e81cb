// Starts `keyvault serve --dev` in a fresh temp dir on an ephemeral port and reads
// DIR/dev-credentials.json. Used from node:test `before` hooks.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..", "..");

export function keyvaultBin() {
  const bin = process.env.KEYVAULT_BIN || join("target", "debug", "keyvault");
  return isAbsolute(bin) ? bin : resolve(repoRoot, bin);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function startServer(extraArgs = [], { timeoutMs = 30000 } = {}) {
  const bin = keyvaultBin();
  if (!existsSync(bin)) throw new Error(`keyvault binary not found at ${bin} (set KEYVAULT_BIN)`);
  const base = mkdtempSync(join(tmpdir(), "kv-e2e-js-"));
  const dataDir = join(base, "data");
  const logPath = join(base, "server.log");
  const logFd = openSync(logPath, "a");
  const args = ["serve", "--dev", "--data-dir", dataDir, "--addr", "127.0.0.1:0", ...extraArgs];
  const child = spawn(bin, args, { stdio: ["ignore", logFd, logFd] });
  closeSync(logFd);
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));
  const credsPath = join(dataDir, "dev-credentials.json");
  const deadline = Date.now() + timeoutMs;
  const logTail = () => {
    try {
      return readFileSync(logPath, "utf8").slice(-4000);
    } catch {
      return "<no log>";
    }
  };
  for (;;) {
    if (exited) throw new Error(`keyvault exited during startup (${JSON.stringify(exited)}):\n${logTail()}`);
    if (existsSync(credsPath)) {
      try {
        const creds = JSON.parse(readFileSync(credsPath, "utf8"));
        const ca = readFileSync(creds.ca_cert, "utf8");
        const server = {
          creds,
          ca,
          dataDir,
          logTail,
          child,
          async stop() {
            if (exited) return;
            const done = new Promise((r) => child.once("exit", r));
            child.kill("SIGKILL");
            await done;
            rmSync(base, { recursive: true, force: true });
          },
        };
        return server;
      } catch {
        // tolerate a partially written file; retry
      }
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`keyvault did not write ${credsPath} within ${timeoutMs} ms:\n${logTail()}`);
    }
    await sleep(50);
  }
}
