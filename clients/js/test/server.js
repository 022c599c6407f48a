// Starts a real `reco serve` (SQLite, a private port, the repository's virtualenv) for the Node tests.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const ADMIN_KEY = "js-tests-admin-key-00000000000000";
const PYTHON = process.env.RECO_PYTHON || join(ROOT, ".venv/bin/python");

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
    srv.on("error", fail);
  });
}

export async function startServer(extraEnv = {}) {
  const port = await freePort();
  const tmp = mkdtempSync(join(tmpdir(), "reco-js-"));
  const env = {
    ...process.env,
    PYTHONPATH: ROOT,
    RECO_DATABASE_URL: `sqlite:///${join(tmp, "reco.db")}`,
    RECO_ARTIFACT_DIR: join(tmp, "artifacts"),
    RECO_API_KEYS: `${ADMIN_KEY}:admin`,
    RECO_EMBEDDED_WORKER: "false",
    RECO_LOG_LEVEL: "WARNING",
    ...extraEnv,
  };
  const proc = spawn(PYTHON, ["-c", "import sys; from app.cli import main; sys.exit(main())", "serve", "--port", String(port)], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`reco serve exited: ${log.slice(-2000)}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`reco serve did not start in 30 s: ${log.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base,
    tmp,
    proc,
    async stop() {
      proc.kill("SIGTERM");
      await new Promise((r) => {
        const t = setTimeout(() => {
          proc.kill("SIGKILL");
          r();
        }, 10000);
        proc.on("exit", () => {
          clearTimeout(t);
          r();
        });
      });
    },
  };
}
