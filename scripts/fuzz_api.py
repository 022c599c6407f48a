"""Fuzz the served API with schemathesis: no 5xx, responses conform to the OpenAPI schema.

Loads the demo shop into a temporary SQLite store (`reco demo --no-serve`), serves it with a static admin key
(`reco serve`), runs `schemathesis run` against /openapi.json bounded by --seconds, stops the server.
Exit status: schemathesis's (0: nothing found). Usage: python scripts/fuzz_api.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "reco_fuzz-admin-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=120, help="bound on the whole fuzz run")
    parser.add_argument("--max-examples", type=int, default=20)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="reco-fuzz-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECO_DATABASE_URL": f"sqlite:///{work / 'reco.db'}",
        "RECO_ARTIFACT_DIR": str(work / "artifacts"),
        "RECO_API_KEYS": f"{KEY}:admin",
        "RECO_REDIS_URL": "",
        "RECO_EMBEDDED_WORKER": "false",
    }
    env.pop("RECO_REDIS_URL")
    reco = [str(bindir / "reco")] if (bindir / "reco").exists() else ["reco"]
    subprocess.run(
        [*reco, "demo", "--no-serve", "--users", "200", "--items", "100"],
        env=env,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    port = _free_port()
    server = subprocess.Popen([*reco, "serve", "--port", str(port)], env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        cmd = [
            str(bindir / "schemathesis") if (bindir / "schemathesis").exists() else "schemathesis",
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            str(args.max_examples),
        ]
        try:
            return subprocess.run(cmd, cwd=ROOT, timeout=args.seconds).returncode
        except subprocess.TimeoutExpired:
            print(f"fuzz_api: stopped after {args.seconds} s (bound)", file=sys.stderr)
            return 0
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
