"""`python -m app.eventlog`: the same as `reco consume`, without loading the rest of the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from app.eventlog import cli as eventlog

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m app.eventlog")
    eventlog.register(parser.add_subparsers(dest="command", required=True))
    sys.exit(eventlog.cmd_consume(parser.parse_args(["consume", *sys.argv[1:]])))
