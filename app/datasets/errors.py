"""The one error type of the importers: it names the file and the line that could not be read."""

from __future__ import annotations

from pathlib import Path


class DatasetFormatError(ValueError):
    """A data file is missing, has an unknown layout, or holds a line that cannot be parsed."""

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
