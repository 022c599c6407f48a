"""`python -m app.trainer [--once]`: the background trainer (same as `reco worker`)."""

from __future__ import annotations

import argparse
import logging
import sys

from app.settings import load_settings
from app.trainer.process import run_worker


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the worker."""
    parser = argparse.ArgumentParser(prog="python -m app.trainer", description="Run the background trainer.")
    parser.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="stop when this process is gone (embedded)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(settings, once=args.once, parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
