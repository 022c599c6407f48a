"""`reco --help` names the evaluation protocol's file, and that file is in the repository (issue 11)."""

from __future__ import annotations

import re
import subprocess

from tests.helpers.servers import RECO, ROOT


def test_help_points_to_a_shipped_protocol() -> None:
    out = subprocess.run([*RECO, "--help"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    named = re.findall(r"[\w/]*EVALUATION\.md", out)
    assert named, out
    for path in named:
        assert (ROOT / path).is_file(), f"{path} is named by reco --help but not shipped"
