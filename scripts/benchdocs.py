"""Shared by the bench_*.py scripts: replace one benchmark's section of docs/BENCHMARKS.md in place."""

from __future__ import annotations

import re
from pathlib import Path


def update_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting with `heading` (up to the next `## `), or append it; others stay as they are."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = section.rstrip("\n") + "\n\n"
    text = (
        pattern.sub(lambda _: body, text, count=1)
        if pattern.search(text)
        else text.rstrip("\n") + "\n\n" + body
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
